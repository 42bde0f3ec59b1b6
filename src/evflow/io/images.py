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
from .ome import ome_images

__all__ = ["read_images", "image_axes"]

_FIELD_AXES = set("TZIQRPMHAEVLB")  # everything that is neither channel nor plane becomes a field
_CHANNEL_AXES = set("CS")
MAX_CHANNELS = 32
#: suffixes read through the optional bioio package (``pip install evflow[bioio]``)
BIOIO_SUFFIXES = (".nd2", ".czi", ".lif")


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


def _stored_pixel_size(tf) -> tuple[float | None, str | None]:
    """(pixel size in nm, the keyword it came from) from OME (PhysicalSizeX) or ImageJ (XResolution + unit);
    (None, what is stored) for an ImageJ scale in unit 'pixel' (a scale with no length: ImageJ's blobs.gif
    saved with a scale set, e.g.)."""
    if tf.is_ome and tf.ome_metadata:
        imgs = ome_images(tf.ome_metadata)
        if imgs and imgs[0]["pixel_size_nm"] is not None:
            return float(imgs[0]["pixel_size_nm"][1]), "OME PhysicalSizeX"
    page = tf.pages[0]
    ij = tf.imagej_metadata or {}
    unit = str(ij.get("unit", "")).lower()
    res = page.tags.get("XResolution")
    if res is not None and unit in ("micron", "um", "µm", "\\u00b5m", "microns", "nm"):
        num, den = res.value
        if num > 0 and den > 0:
            size = den / num  # units per pixel
            return size * (1.0 if unit == "nm" else 1e3), "ImageJ XResolution"
    if res is not None and unit == "pixel" and tuple(res.value) != (1, 1) and res.value[0] > 0:
        return None, f"ImageJ XResolution {res.value[1] / res.value[0]:.4g} per pixel in unit 'pixel'"
    return None, None


def _pixel_size_from_tiff(tf) -> float | None:
    """Pixel size in nm from the file's metadata, or None when none is stored, the stored one is implausible
    (outside :data:`PIXEL_SIZE_RANGE_NM`) or has no unit of length (an :class:`~evflow.errors.EvflowWarning`
    then says so)."""
    try:
        size, source = _stored_pixel_size(tf)
    except Exception:  # metadata is best effort
        return None
    import warnings

    from ..errors import EvflowWarning

    where = getattr(tf.filehandle, "path", tf.filename)
    if size is None:
        if source:  # a scale with no unit of length (ImageJ's 'pixel') says nothing of the sample plane
            warnings.warn(EvflowWarning(f"{where}: {source} is a scale with no unit of length: taken as not "
                                        "stored (give pixel_size_nm)"), stacklevel=3)
        return None
    lo, hi = PIXEL_SIZE_RANGE_NM
    if not lo <= size <= hi:
        warnings.warn(EvflowWarning(
            f"{where}: the pixel size stored in {source} is {size:.3g} nm, outside "
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


def _check_decoded_size(path, shape, dtype, field_shape=None):
    """Refuse a TIFF whose declared pixels exceed the limit, or one field of which (plus a float32 working copy)
    exceeds free memory (fields are read one at a time)."""
    n = int(np.prod([int(d) for d in shape], dtype=np.float64))
    raw = n * np.dtype(dtype).itemsize
    nf = int(np.prod([int(d) for d in (shape if field_shape is None else field_shape)], dtype=np.float64))
    need = nf * np.dtype(dtype).itemsize + 4 * nf  # one decoded field and the float32 copy the analysis makes
    limit = int(os.environ.get("EVFLOW_MAX_IMAGE_BYTES", MAX_IMAGE_BYTES))
    gib = 1 << 30
    if raw > limit:
        raise ImageError(f"{path}: TIFF declares {tuple(shape)} {np.dtype(dtype)} pixels = {raw / gib:.2f} GiB decoded, "
                         f"over the limit of {limit / gib:.2f} GiB per file (EVFLOW_MAX_IMAGE_BYTES); split it into "
                         "per-field files or raise the limit")
    avail = _available_memory()
    if avail is not None and need > avail:
        raise ImageError(f"{path}: TIFF declares {tuple(shape)} {np.dtype(dtype)} pixels: reading and analysing "
                         f"{'it' if field_shape is None else 'one field ' + str(tuple(field_shape))} needs "
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


def _series_list(tf, path, axes_override):
    """The series that are fields of a TIFF: every series of an OME-TIFF (positions), else the first.

    Each entry is ``(index, shape, dtype, axes)``; an OME series whose shape, dtype or axes differ from the first
    is an :class:`ImageError` (fields of one experiment are of one size)."""
    chosen = tf.series if (tf.is_ome and len(tf.series) > 1) else tf.series[:1]
    size = os.path.getsize(path)
    out = []
    for k, s in enumerate(chosen):
        for page in s.pages:
            if page is None:
                continue
            for o, c in zip(getattr(page, "dataoffsets", ()), getattr(page, "databytecounts", ())):
                if o + c > size:
                    raise ImageError(f"{path}: truncated TIFF: image data at byte {o} + {c} runs past the end of the "
                                     f"{size}-byte file")
        entry = (k, tuple(int(n) for n in s.shape), np.dtype(s.dtype), axes_override or s.axes)
        if out and entry[1:] != out[0][1:]:
            raise ImageError(f"{path}: series {k} (a position) is {entry[1]} {entry[2]} ({entry[3]}) but series 0 is "
                             f"{out[0][1]} {out[0][2]} ({out[0][3]}); every field of a file must have one shape")
        out.append(entry)
    return out


def _read_page(path, ifd, shape, dtype, where):
    """One page (plane) of a TIFF by its IFD index, read alone: no other page (and no series table) is read."""
    import tifffile

    if ifd is None:  # a plane the OME metadata declares but no file holds: tifffile's convention, zeros
        return np.zeros(shape, dtype)
    try:
        with tifffile.TiffFile(path, _multifile=False) as tf:
            a = tf.pages[ifd].asarray()
    except Exception as exc:
        raise ImageError(f"{where}: failed to read page {ifd} ({type(exc).__name__}: {exc})") from exc
    if tuple(a.shape) != tuple(shape):
        raise ImageError(f"{where}: page {ifd} decodes to {tuple(a.shape)}, but the TIFF declares pages of "
                         f"{tuple(shape)} (corrupt or inconsistent tags)")
    return a


def _page_refs(series, path):
    """(file, IFD index) of every page of a tifffile series, in the series' order (None for a missing plane)."""
    refs = []
    for page in series.pages:
        if page is None:
            refs.append((path, None))
        else:
            fh = getattr(page.parent, "filehandle", None)
            refs.append((str(getattr(fh, "path", path) or path), int(page.index)))
    return refs


def _lazy_series(path, k, shape, dtype, page_shape, refs):
    """A dask array of series ``k`` with one task per page (a whole-series read when pages do not tile it)."""
    import dask
    import dask.array as da

    nd = len(page_shape)
    grid = shape[: len(shape) - nd]
    if tuple(shape[len(grid):]) != tuple(page_shape) or int(np.prod(grid)) != len(refs):
        if k == 0:
            return da.from_delayed(dask.delayed(_read_tiff)(path, shape), shape=shape, dtype=dtype)
        raise ImageError(f"{path}: series {k} has pages of {page_shape} that do not tile its shape {shape}")
    read = dask.delayed(_read_page, pure=True)
    planes = [da.from_delayed(read(f, i, tuple(page_shape), dtype, f"{path} series {k}"), shape=tuple(page_shape),
                              dtype=dtype) for f, i in refs]
    return da.stack(planes).reshape(tuple(grid) + tuple(page_shape))


def _open_tiff_fields(path, axes_override, t):
    """A TIFF as lazy (fields, t, channel, y, x) with what its metadata says of them."""
    import tifffile

    if not os.path.exists(path):
        raise ImageError(f"{path}: file not found")
    try:
        with tifffile.TiffFile(path) as tf:
            if not tf.series:
                raise ImageError(f"{path}: TIFF holds no image series")
            series = _series_list(tf, path, axes_override)
            pages = [(tuple(tf.series[k].keyframe.shape), _page_refs(tf.series[k], path)) for k, *_ in series]
            px = _pixel_size_from_tiff(tf)
            ome = ome_images(tf.ome_metadata) if tf.is_ome and tf.ome_metadata else []
            ij = tf.imagej_metadata or {}
            fi = ome[0]["time_increment_s"] if ome else None
            if fi is None and ij.get("finterval"):
                fi = float(ij["finterval"])
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    _k, shape, dtype, ax = series[0]
    fields, _c, iy, ix = image_axes(ax, shape)
    keep = "T" in ax.upper() and (t is True or (t is None and fi is not None))
    n_f = int(np.prod([shape[i] for i in fields if not (keep and ax.upper()[i] == "T")]))
    field_shape = tuple(n for i, n in enumerate(shape) if i not in fields or (keep and ax.upper()[i] == "T"))
    _check_decoded_size(path, (len(series),) + shape if len(series) > 1 else shape, dtype,
                        field_shape=field_shape if n_f * len(series) > 1 else None)
    parts, series_of, pos = [], [], []
    for (k, shape, dtype, ax), (page_shape, refs) in zip(series, pages):
        arr = _lazy_series(path, k, shape, dtype, page_shape, refs)
        parts.append(_to_fields_t(arr, ax, keep))
        series_of += [k] * parts[-1].shape[0]
        p = ome[k]["position_um"] if k < len(ome) else None
        pos += [p if p is not None else (np.nan, np.nan)] * parts[-1].shape[0]
    import dask.array as da

    block = parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0)
    names = ome[0]["channels"] if ome else []
    colors = ome[0]["colors"] if ome else []
    meta = {"series": series_of, "position_um": pos, "px": px, "interval": fi if keep else None, "axes": ax,
            "channels": names if len(names) == block.shape[2] else [],
            "colors": colors if len(colors) == block.shape[2] else []}
    return block, keep, meta


def _open_bioio(path, axes_override=None, t=None):
    """An ND2/CZI/LIF file through bioio as lazy (fields, t, channel, y, x) with what its metadata says of
    them: the same (block, keep, meta) as :func:`_open_tiff_fields`.  Every scene (stage position) is a field,
    as the series of an OME-TIFF; these formats have a time axis of their own, so more than one frame is a
    time-lapse unless ``t`` is False; ``axes_override`` names the axes of one scene.  ND2 files are opened
    with ``nd2``, the reader bioio-nd2 wraps (:mod:`evflow.io.nd2`); CZI scenes are checked against the
    file's subblocks (:func:`_czi_subblock_scenes`)."""
    suffix = Path(path).suffix.lower()
    if not os.path.exists(path):
        raise ImageError(f"{path}: file not found")
    try:
        if suffix == ".nd2":
            import nd2  # noqa: F401
        else:
            from bioio import BioImage
    except ImportError as exc:
        raise ImageError(
            f"{path}: reading {Path(path).suffix} files needs the optional package bioio "
            "(pip install evflow[bioio], or bioio with bioio-nd2 / bioio-czi / bioio-lif)"
        ) from exc
    try:
        if suffix == ".nd2":
            from .nd2 import nd2_scenes

            datas, names, px, interval, stage = nd2_scenes(path)
            scenes = list(range(len(datas)))
        else:
            img = BioImage(path)
            scenes = list(img.scenes) or [None]
            datas = []
            for i in range(len(scenes)):
                if scenes[i] is not None:
                    img.set_scene(i)
                datas.append(img.dask_data)  # T C Z Y X
            names = [str(n) for n in (img.channel_names or [])]
            px = img.physical_pixel_sizes.X
            ti = getattr(img, "time_interval", None)
            interval = float(ti.total_seconds() if hasattr(ti, "total_seconds") else ti) if ti else None
            stage = [(np.nan, np.nan)] * len(datas)
    except ImageError:
        raise
    except Exception as exc:  # the readers raise their own types for corrupt or unsupported files
        raise ImageError(f"{path}: {'nd2' if suffix == '.nd2' else 'bioio'} cannot read it: "
                         f"{type(exc).__name__}: {exc}") from exc
    if suffix == ".czi":
        datas, scenes, origins = _czi_subblock_scenes(path, datas, scenes)
        if origins is not None and px:  # a scene's origin in the file's pixels, the stage position over px
            stage = [(x * float(px), y * float(px)) for x, y in origins]
    shapes = [tuple(d.shape) for d in datas]
    if len(set(shapes)) != 1:
        raise ImageError(f"{path}: its scenes differ in shape (T, C, Z, Y, X) {dict(zip(scenes, shapes))}; "
                         "evflow reads scenes of one size as fields")
    ax = axes_override or "TCZYX"
    if len(datas) == 1:
        data = datas[0]
    else:
        import dask.array as da

        data, ax = da.stack(datas), "P" + ax  # P: the scene, a field axis
    up = ax.upper()
    keep = "T" in up and (t is True or (t is None and data.shape[up.index("T")] > 1))
    block = _to_fields_t(data, ax, keep)
    per_scene = block.shape[0] // len(datas)
    meta = {"series": list(np.repeat(np.arange(len(datas)), per_scene)),
            "position_um": [p for p in stage for _ in range(per_scene)], "px": float(px) * 1e3 if px else None,
            "interval": interval if keep and interval and interval > 0 else None, "axes": ax,
            "channels": names if len(names) == block.shape[2] else [], "colors": [""] * block.shape[2]}
    return block, keep, meta


def _czi_subblock_scenes(path, datas, scenes):
    """The scenes of a CZI file and their origins (x, y) in pixels (None where they are not one per scene).
    Where the file's image data hold more scenes than its metadata lists (bioio would read the first only),
    they are read through libCZI in place of bioio's ``datas`` and ``scenes``, with a warning that says so."""
    from .czi import czi_scenes

    try:
        found = czi_scenes(path, len(datas))
    except ImageError:
        raise
    except Exception as exc:  # libCZI raises RuntimeError on what it cannot parse
        raise ImageError(f"{path}: libCZI cannot read its scenes: {type(exc).__name__}: {exc}") from exc
    arrays, origins = found
    if arrays is None:
        return datas, scenes, origins if origins is not None and len(origins) == len(datas) else None
    import warnings

    from ..errors import EvflowWarning

    warnings.warn(EvflowWarning(
        f"{path}: its image data hold {len(arrays)} scenes but its metadata lists {len(datas)}; all "
        f"{len(arrays)} are read as fields (from the subblock directory, through libCZI)"), stacklevel=4)
    return arrays, list(range(len(arrays))), origins


def _to_fields(arr, axes):
    """Reorder an array to (fields, channel, y, x)."""
    fields, chan, iy, ix = image_axes(axes, arr.shape)
    order = fields + ([chan] if chan is not None else []) + [iy, ix]
    a = arr.transpose(order)
    nf = int(np.prod([arr.shape[i] for i in fields])) if fields else 1
    nc = arr.shape[chan] if chan is not None else 1
    return a.reshape(nf, nc, arr.shape[iy], arr.shape[ix])


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
        ``TimeIncrement``) and for ND2/CZI/LIF files of more than one
        frame; ``attrs['frame_interval_s']`` then holds the interval.  The
        scenes (stage positions) of an ND2/CZI/LIF file are fields, as the
        series of a multi-position OME-TIFF, and its channel names name the
        channels.

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
    series_all, pos_all, chan_names, chan_colors = [], [], None, None
    for item in items:
        series_of, positions, file_names, file_colors = None, None, [], []
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
                opener = _open_bioio if Path(p).suffix.lower() in BIOIO_SUFFIXES else _open_tiff_fields
                block, keep, meta = opener(p, axes, t)
                ax, px = meta["axes"], meta["px"]
                interval = interval if interval is not None else meta["interval"]
                series_of, positions = meta["series"], meta["position_um"]
                file_names, file_colors = meta["channels"], meta["colors"]
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
            named = bool(file_names) and all(file_names) and len(set(file_names)) == len(file_names)
            if markers is None and named:
                if chan_names is None and not blocks:
                    chan_names, chan_colors = list(file_names), list(file_colors)
                elif chan_names is not None and list(file_names) != chan_names:
                    raise ImageError(f"{where}: OME channel names {list(file_names)} differ from the first file's "
                                     f"{chan_names}; pass markers= to name the channels")
            blocks.append(block)
            series_all += series_of if series_of is not None else [0] * block.shape[0]
            pos_all += positions if positions is not None else [(np.nan, np.nan)] * block.shape[0]
            kept_t.append(keep)
            files.extend([label] * block.shape[0])
        except ImageError as exc:
            if on_error == "raise":
                raise
            failed.append(str(exc))
    if not blocks:
        raise ImageError("no readable fields: " + "; ".join(failed))
    time_lapse = any(kept_t) or t is True
    # one chunk per field (all its channels), per time point of a time-lapse: a chunk reads only its pages
    data = da.concatenate(blocks, axis=0).rechunk((1, 1 if time_lapse else -1) + blocks[0].shape[2:])
    if not time_lapse:
        data = data[:, 0]
    n_ch = data.shape[2 if time_lapse else 1]
    names = list(markers) if markers is not None else (chan_names or [f"ch{i}" for i in range(n_ch)])
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
    coords = {"fov": np.arange(data.shape[0]), "channel": names, "file": ("fov", files),
              "series": ("fov", np.asarray(series_all, np.int64))}
    if chan_colors and any(chan_colors):
        coords["channel_color"] = ("channel", list(chan_colors))
    pos = np.asarray(pos_all, np.float64).reshape(-1, 2)
    if np.isfinite(pos).any():
        coords["stage_x_um"] = ("fov", pos[:, 0])
        coords["stage_y_um"] = ("fov", pos[:, 1])
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
