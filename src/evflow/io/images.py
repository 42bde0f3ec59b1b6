"""TIFF / OME-TIFF / ImageJ fields of view -> lazy ``xarray.DataArray`` (fov, channel, y, x).

Every field is one dask chunk (all its channels).  Files are checked when
they are opened (readable TIFF, pages inside the file, axes, channel count,
pixel size); the pixels are read only when computed.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import ImageError

__all__ = ["read_images", "image_axes"]

_FIELD_AXES = set("TZIQRPMHAEVLB")  # everything that is neither channel nor plane becomes a field
_CHANNEL_AXES = set("CS")
MAX_CHANNELS = 32


def _expand(paths_or_pattern) -> list:
    if isinstance(paths_or_pattern, (str, os.PathLike)):
        p = str(paths_or_pattern)
        if any(ch in p for ch in "*?["):
            found = sorted(glob.glob(p))
            if not found:
                raise ImageError(f"no files match the pattern {p!r}")
            return found
        return [p]
    items = list(paths_or_pattern)
    if not items:
        raise ImageError("read_images: no paths given")
    return items


def image_axes(axes: str, shape) -> tuple[list[int], int | None, int, int]:
    """Indices of the field axes, the channel axis (or None), and the Y and X axes."""
    axes = axes.upper()
    if len(axes) != len(shape):
        raise ImageError(f"axes {axes!r} has {len(axes)} letters but the image has {len(shape)} dimensions {tuple(shape)}")
    if len(set(axes)) != len(axes):
        raise ImageError(f"axes {axes!r} repeats a letter")
    if "Y" not in axes or "X" not in axes:
        raise ImageError(f"axes {axes!r} must contain Y and X")
    chan = [i for i, a in enumerate(axes) if a in _CHANNEL_AXES]
    if len(chan) > 1:
        raise ImageError(f"axes {axes!r} has more than one channel axis (C/S)")
    unknown = [a for a in axes if a not in _FIELD_AXES | _CHANNEL_AXES | {"Y", "X"}]
    if unknown:
        raise ImageError(f"axes {axes!r}: unknown letter(s) {unknown}")
    fields = [i for i, a in enumerate(axes) if a in _FIELD_AXES]
    return fields, (chan[0] if chan else None), axes.index("Y"), axes.index("X")


#: plausible pixel sizes in the sample plane (nm); a stored value outside is taken as not stored
PIXEL_SIZE_RANGE_NM = (1.0, 1e5)


def _stored_pixel_size(tf) -> tuple[float, str] | tuple[None, None]:
    """(pixel size in nm, the keyword it came from) from OME (PhysicalSizeX) or ImageJ (XResolution + unit)."""
    if tf.is_ome and tf.ome_metadata:
        import re

        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tf.ome_metadata)
        if m:
            u = re.search(r'PhysicalSizeXUnit="([^"]+)"', tf.ome_metadata)
            unit = u.group(1) if u else "µm"
            factor = {"nm": 1.0, "µm": 1e3, "um": 1e3, "mm": 1e6}.get(unit)
            if factor:
                return float(m.group(1)) * factor, "OME PhysicalSizeX"
    page = tf.pages[0]
    ij = tf.imagej_metadata or {}
    unit = str(ij.get("unit", "")).lower()
    res = page.tags.get("XResolution")
    if res is not None and unit in ("micron", "um", "µm", "\\u00b5m", "microns", "nm"):
        num, den = res.value
        if num > 0 and den > 0:
            size = den / num  # units per pixel
            return size * (1.0 if unit == "nm" else 1e3), "ImageJ XResolution"
    return None, None


def _pixel_size_from_tiff(tf) -> float | None:
    """Pixel size in nm from the file's metadata, or None when none is stored or the stored one is implausible
    (outside :data:`PIXEL_SIZE_RANGE_NM`; an :class:`~evflow.errors.EvflowWarning` then says so)."""
    try:
        size, source = _stored_pixel_size(tf)
    except Exception:  # metadata is best effort
        return None
    if size is None:
        return None
    lo, hi = PIXEL_SIZE_RANGE_NM
    if not lo <= size <= hi:
        import warnings

        from ..errors import EvflowWarning

        warnings.warn(EvflowWarning(
            f"{getattr(tf.filehandle, 'path', tf.filename)}: the pixel size stored in {source} is {size:.3g} nm, outside "
            f"{lo:g} nm - {hi / 1e3:g} um: taken as not stored (give pixel_size_nm)"), stacklevel=3)
        return None
    return size


def _open_tiff(path, axes_override):
    """Validate a TIFF; return (shape, dtype, axes, pixel_size_nm)."""
    import tifffile

    if not os.path.exists(path):
        raise ImageError(f"{path}: file not found")
    size = os.path.getsize(path)
    try:
        with tifffile.TiffFile(path) as tf:
            if not tf.series:
                raise ImageError(f"{path}: TIFF holds no image series")
            s = tf.series[0]
            for page in s.pages:
                if page is None:
                    continue
                offs = getattr(page, "dataoffsets", ())
                cnts = getattr(page, "databytecounts", ())
                for o, c in zip(offs, cnts):
                    if o + c > size:
                        raise ImageError(
                            f"{path}: truncated TIFF: image data at byte {o} + {c} runs past the end of the "
                            f"{size}-byte file"
                        )
            shape, dtype, axes = tuple(s.shape), np.dtype(s.dtype), s.axes
            px = _pixel_size_from_tiff(tf)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    if axes_override is not None:
        axes = axes_override
    _check_decoded_size(path, shape, dtype)
    return shape, dtype, axes, px


#: most bytes one TIFF may decode to (environment: EVFLOW_MAX_IMAGE_BYTES); a few KB of zlib data can declare
#: gigabytes of pixels, so the declared size is checked before anything is allocated
MAX_IMAGE_BYTES = 2 << 30


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _check_decoded_size(path, shape, dtype):
    """Refuse a TIFF whose declared pixels (plus a float32 working copy) exceed the limit or free memory."""
    n = 1
    for d in shape:
        n *= int(d)
    raw = n * np.dtype(dtype).itemsize
    need = raw + 4 * n  # the decoded array and the float32 copy the analysis makes
    limit = int(os.environ.get("EVFLOW_MAX_IMAGE_BYTES", MAX_IMAGE_BYTES))
    gib = 1 << 30
    if raw > limit:
        raise ImageError(f"{path}: TIFF declares {tuple(shape)} {np.dtype(dtype)} pixels = {raw / gib:.2f} GiB decoded, "
                         f"over the limit of {limit / gib:.2f} GiB per file (EVFLOW_MAX_IMAGE_BYTES); split it into "
                         "per-field files or raise the limit")
    avail = _available_memory()
    if avail is not None and need > avail:
        raise ImageError(f"{path}: TIFF declares {tuple(shape)} {np.dtype(dtype)} pixels: reading and analysing it needs "
                         f"{need / gib:.2f} GiB but only {avail / gib:.2f} GiB of memory is available")


def _read_tiff(path, shape=None):
    import tifffile

    try:
        arr = tifffile.imread(path, series=0)
    except Exception as exc:
        raise ImageError(f"{path}: failed to read the pixels ({type(exc).__name__}: {exc})") from exc
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ImageError(f"{path}: the decoded pixels have shape {tuple(arr.shape)}, but the TIFF declares "
                         f"{tuple(shape)} (corrupt or inconsistent tags)")
    return arr


def _open_bioio(path):
    try:
        from bioio import BioImage
    except ImportError as exc:
        raise ImageError(
            f"{path}: reading {Path(path).suffix} files needs the optional package bioio "
            "(pip install bioio bioio-nd2 / bioio-czi)"
        ) from exc
    img = BioImage(path)
    data = img.dask_data  # T C Z Y X
    px = img.physical_pixel_sizes.X
    return data, "TCZYX", (float(px) * 1e3 if px else None)


def _to_fields(arr, axes):
    """Reorder an array to (fields, channel, y, x)."""
    fields, chan, iy, ix = image_axes(axes, arr.shape)
    order = fields + ([chan] if chan is not None else []) + [iy, ix]
    a = arr.transpose(order)
    nf = int(np.prod([arr.shape[i] for i in fields])) if fields else 1
    nc = arr.shape[chan] if chan is not None else 1
    return a.reshape(nf, nc, arr.shape[iy], arr.shape[ix])


def _frame_interval_s(path) -> float | None:
    """Frame interval (s) a TIFF declares: ImageJ ``finterval`` or OME ``TimeIncrement``; None when absent."""
    import re

    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            if tf.is_ome and tf.ome_metadata:
                m = re.search(r'TimeIncrement="([0-9.eE+-]+)"', tf.ome_metadata)
                if m:
                    return float(m.group(1))
            ij = tf.imagej_metadata or {}
            if ij.get("finterval"):
                return float(ij["finterval"])
    except Exception:  # metadata is best effort
        return None
    return None


def _to_fields_t(arr, axes, keep_t):
    """Reorder an array to (fields, t, channel, y, x); t has length 1 unless ``keep_t`` and a T axis exists."""
    up = axes.upper()
    if not keep_t or "T" not in up:
        return _to_fields(arr, axes)[:, None]
    fields, chan, iy, ix = image_axes(axes, arr.shape)
    it = up.index("T")
    rest = [i for i in fields if i != it]
    order = rest + [it] + ([chan] if chan is not None else []) + [iy, ix]
    nf = int(np.prod([arr.shape[i] for i in rest])) if rest else 1
    nc = arr.shape[chan] if chan is not None else 1
    return arr.transpose(order).reshape(nf, arr.shape[it], nc, arr.shape[iy], arr.shape[ix])


def read_images(
    paths_or_pattern,
    *,
    markers: Sequence[str] | None = None,
    axes: str | None = None,
    pixel_size_nm: float | None = None,
    camera=None,
    on_error: str = "raise",
    t: bool | None = None,
) -> xr.DataArray:
    """Open fields of view lazily as an ``xarray.DataArray`` (fov, channel, y, x), or (fov, t, channel, y, x).

    Parameters
    ----------
    paths_or_pattern : str, path, or sequence
        A file, a glob pattern (sorted), or a list.  A list item that is
        itself a list/tuple of files is one field whose files are its
        channels (one 2-D image per file, in ``markers`` order).
    markers : sequence of str, optional
        Channel names; must match the channel count.  Default ``ch0, ch1, ...``.
    axes : str, optional
        Dimension letters of every file (tifffile's: e.g. ``"CYX"``,
        ``"TCYX"``, ``"YXS"``), overriding the file's.  Axes other than
        C/S (channel) and Y/X (T, Z, Q, I, ...) are fields.
    pixel_size_nm : float, optional
        Pixel size in the sample plane (nm); default from OME or ImageJ
        metadata (None when absent).
    camera : Camera or dict, optional
        Convert ADU to photons (float32): ``(ADU - offset) / (gain * em_gain)``.
    on_error : {'raise', 'skip'}
        'skip' leaves out files that cannot be opened and lists them in
        ``attrs['failed']`` (``"path: reason"``).
    t : bool, optional
        Keep the T axis as a ``t`` dimension (time-lapse, e.g. a bleaching
        movie) instead of making each frame a field.  Default: keep it for
        files that declare a frame interval (ImageJ ``finterval``, OME
        ``TimeIncrement``); ``attrs['frame_interval_s']`` then holds it.

    Returns
    -------
    xarray.DataArray
        Dask-backed, one chunk per field.  Coords: ``fov`` (0..n-1),
        ``channel`` (markers), ``file`` (along fov).  Attrs:
        ``pixel_size_nm``, ``units`` ('ADU' or 'photons'), ``camera``,
        ``failed``.

    Raises
    ------
    ImageError
        Unreadable or truncated files, bad axes, channel count not matching
        ``markers``, fields of different sizes, a pixel size <= 0.
    """
    import dask
    import dask.array as da

    from ..imaging.camera import as_camera

    if t not in (None, True, False):
        raise ImageError(f"t must be True, False or None, got {t!r}")
    if on_error not in ("raise", "skip"):
        raise ImageError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if pixel_size_nm is not None and not (np.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise ImageError(f"pixel_size_nm must be > 0, got {pixel_size_nm}")
    camera = as_camera(camera)
    items = _expand(paths_or_pattern)
    blocks, files, failed = [], [], []
    ref = None  # (n_t, n_channels, Y, X)
    px_found = None
    kept_t, interval = [], None
    for item in items:
        try:
            if isinstance(item, (list, tuple)):
                planes = []
                for p in item:
                    shape, dtype, ax, px = _open_tiff(str(p), axes)
                    fields, chan, iy, ix = image_axes(ax, shape)
                    n_extra = int(np.prod([shape[i] for i in fields + ([chan] if chan is not None else [])]))
                    if n_extra != 1:
                        raise ImageError(f"{p}: a per-channel file must hold one 2-D image, found shape {shape} ({ax})")
                    arr = da.from_delayed(dask.delayed(_read_tiff)(str(p), shape), shape=shape, dtype=dtype)
                    planes.append(arr.reshape(shape[iy], shape[ix]))
                    px_found = px_found or px
                if len({(pl.shape, pl.dtype) for pl in planes}) != 1:
                    raise ImageError(f"channel files of one field differ in size or type: {[str(p) for p in item]}")
                block = da.stack(planes)[None, None]
                keep = False
                label = os.pathsep.join(str(p) for p in item)
                where = str(item[0])
            else:
                p = str(item)
                if Path(p).suffix.lower() in (".nd2", ".czi"):
                    data, ax, px = _open_bioio(p)
                    if axes is not None:
                        ax = axes
                    keep = bool(t) and "T" in ax.upper()
                    block = _to_fields_t(data, ax, keep)
                else:
                    shape, dtype, ax, px = _open_tiff(p, axes)
                    fields, chan, iy, ix = image_axes(ax, shape)
                    arr = da.from_delayed(dask.delayed(_read_tiff)(p, shape), shape=shape, dtype=dtype)
                    fi = _frame_interval_s(p) if t is not False else None
                    keep = "T" in ax.upper() and (t is True or (t is None and fi is not None))
                    interval = interval if interval is not None else (fi if keep else None)
                    block = _to_fields_t(arr, ax, keep)
                nc = block.shape[2]
                if nc > MAX_CHANNELS and (markers is None or len(markers) != nc):
                    raise ImageError(
                        f"{p}: the channel axis has {nc} entries (axes {ax!r}, shape {block.shape}); "
                        "is the dimension order right? Pass axes=, e.g. 'TYX' for a time series"
                    )
                px_found = px_found or px
                label = where = p
            if markers is not None and block.shape[2] != len(markers):
                raise ImageError(
                    f"{where}: {block.shape[2]} channel(s) but {len(markers)} marker(s) {list(markers)} were given"
                )
            key = block.shape[1:]
            if ref is None:
                ref = key
            elif key != ref:
                raise ImageError(f"{where}: field shape (t, channel, y, x) {key} differs from the first field's {ref}")
            blocks.append(block)
            kept_t.append(keep)
            files.extend([label] * block.shape[0])
        except ImageError as exc:
            if on_error == "raise":
                raise
            failed.append(str(exc))
    if not blocks:
        raise ImageError("no readable fields: " + "; ".join(failed))
    data = da.concatenate(blocks, axis=0).rechunk((1,) + blocks[0].shape[1:])
    time_lapse = any(kept_t) or t is True
    if not time_lapse:
        data = data[:, 0]
    n_ch = data.shape[2 if time_lapse else 1]
    names = list(markers) if markers is not None else [f"ch{i}" for i in range(n_ch)]
    if len(set(names)) != len(names):
        raise ImageError(f"marker names must be unique, got {names}")
    px = pixel_size_nm if pixel_size_nm is not None else px_found
    if px is not None and not px > 0:
        raise ImageError(f"pixel size from the file metadata is {px} nm; pass pixel_size_nm=")
    units = "ADU"
    if camera is not None:
        data = camera.to_photons(data)
        units = "photons"
    dims = ("fov", "t", "channel", "y", "x") if time_lapse else ("fov", "channel", "y", "x")
    coords = {"fov": np.arange(data.shape[0]), "channel": names, "file": ("fov", files)}
    if time_lapse:
        coords["t"] = np.arange(data.shape[1])
    return xr.DataArray(
        data,
        dims=dims,
        coords=coords,
        attrs={
            **({"frame_interval_s": interval} if time_lapse else {}),
            "pixel_size_nm": None if px is None else float(px),
            "units": units,
            "camera": None if camera is None else camera.to_dict(),
            "failed": failed,
        },
    )
