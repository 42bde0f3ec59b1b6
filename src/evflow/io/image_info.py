"""What a TIFF / OME-TIFF / ImageJ file, or an ND2 / CZI / LIF file, holds, without reading its pixels
(``evflow info FILE``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import ImageError
from .images import MAX_CHANNELS, _pixel_size_from_tiff
from .ome import ome_images

__all__ = ["TIFF_SUFFIXES", "is_tiff", "describe_image", "format_image_info", "format_microscope_info", "ome_images"]

TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf", ".tf8")
_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def is_tiff(path) -> bool:
    """True when ``path`` starts with a TIFF or BigTIFF signature."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in _MAGIC
    except OSError:
        return str(path).lower().endswith(TIFF_SUFFIXES)


@dataclass
class SeriesInfo:
    index: int
    shape: tuple
    axes: str
    dtype: str
    name: str = ""
    channels: list = field(default_factory=list)
    pixel_size_nm: tuple | None = None  # (y, x)
    position_um: tuple | None = None  # stage (x, y) of the first plane


def _channel_axis(axes: str):
    """Index of the channel axis (C, or S for samples per pixel, as read_images takes them), or None."""
    for a in "CS":
        if a in axes:
            return axes.index(a)
    return None


def describe_image(path) -> list[SeriesInfo]:
    """The image series of a TIFF file: shape, axes, dtype, channel names, pixel size, stage position.

    Raises
    ------
    ImageError
        When the file is missing or not a readable TIFF.
    """
    import tifffile

    if not os.path.exists(path):
        raise ImageError(f"{path}: file not found")
    try:
        with tifffile.TiffFile(path) as tf:
            ome = ome_images(tf.ome_metadata) if tf.is_ome and tf.ome_metadata else []
            ij = tf.imagej_metadata or {}
            labels = ij.get("Labels") or ij.get("labels") or []
            px = _pixel_size_from_tiff(tf)
            out = []
            for k, s in enumerate(tf.series):
                info = SeriesInfo(k, tuple(int(n) for n in s.shape), str(s.axes), str(s.dtype), name=s.name or "")
                if k < len(ome):
                    o = ome[k]
                    info.name = o["name"] or info.name
                    info.channels = o["channels"]
                    info.pixel_size_nm = o["pixel_size_nm"]
                    info.position_um = o["position_um"]
                elif labels and _channel_axis(info.axes) is not None:
                    info.channels = [str(v) for v in labels[: info.shape[_channel_axis(info.axes)]]]
                if info.pixel_size_nm is None and px is not None:
                    info.pixel_size_nm = (px, px)
                out.append(info)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    if not out:
        raise ImageError(f"{path}: TIFF holds no image series")
    return out


def format_image_info(path, series: list[SeriesInfo]) -> str:
    """The text ``evflow info`` prints for an image file."""
    with open(path, "rb") as f:
        kind = "BigTIFF" if f.read(4)[2:4] in (b"+\x00", b"\x00+") else "TIFF"
    lines = [str(path), f"  format      {kind}, {len(series)} series" + (" (positions)" if len(series) > 1 else "")]
    for s in series:
        head = f"  series {s.index}" + (f"  {s.name!r}" if s.name else "")
        lines.append(head)
        dims = " x ".join(f"{a}={n}" for a, n in zip(s.axes, s.shape))
        lines.append(f"    shape     {dims}  ({s.dtype})")
        if "T" in s.axes:
            lines.append(f"    time      {s.shape[s.axes.index('T')]} time points (frames of one field)")
        ca = _channel_axis(s.axes)
        if ca is not None or s.channels:
            names = ", ".join(c or f"ch{i}" for i, c in enumerate(s.channels)) if s.channels else "(no names stored)"
            n = s.shape[ca] if ca is not None else len(s.channels)
            note = ""
            if n > MAX_CHANNELS:  # tifffile's guess for a plain multi-page TIFF; read_images refuses it
                note = (f"  [doubtful: more than {MAX_CHANNELS} channels is probably frames or planes, "
                        "not colours; give read_images axes=, e.g. 'TYX']")
            lines.append(f"    channels  {n}: {names}{note}")
        if s.pixel_size_nm is not None:
            y, x = s.pixel_size_nm
            lines.append(f"    pixel     {x:g} nm" + ("" if abs(x - y) < 1e-9 else f" (x) x {y:g} nm (y)"))
        else:
            lines.append("    pixel     size not stored (give pixel_size_nm)")
        if s.position_um is not None:
            lines.append(f"    position  x {s.position_um[0]:g} um, y {s.position_um[1]:g} um")
    return "\n".join(lines)


def format_microscope_info(path) -> str:
    """The text ``evflow info`` prints for an ND2 / CZI / LIF file: what :func:`~evflow.io.read_images` makes
    of it (fields, frames, channels, pixel size, frame interval, stage positions), its pixels unread; the
    reader's warnings (a CZI's scenes missing from its metadata) reach the caller."""
    import numpy as np

    from .images import read_images

    im = read_images(path)
    n = im.sizes["fov"]
    lines = [str(path), f"  format      {os.path.splitext(str(path))[1][1:].upper()}, {n} field"
             + ("s (positions)" if n > 1 else "")]
    dims = " x ".join(f"{d.upper()}={im.sizes[d]}" for d in im.dims if d not in ("fov", "channel"))
    lines.append(f"  field       C={im.sizes['channel']} x {dims}  ({im.dtype})")
    if "t" in im.dims:
        dt = im.attrs.get("frame_interval_s")
        lines.append(f"  time        {im.sizes['t']} time points (frames of one field)"
                     + (f", {dt:g} s apart" if dt else ", interval not stored"))
    lines.append(f"  channels    {im.sizes['channel']}: " + ", ".join(str(c) for c in im["channel"].values))
    px = im.attrs.get("pixel_size_nm")
    lines.append(f"  pixel       {px:g} nm" if px else "  pixel       size not stored (give pixel_size_nm)")
    if "stage_x_um" in im.coords:
        x, y = im["stage_x_um"].values, im["stage_y_um"].values
        lines.append(f"  positions   x {np.nanmin(x):g} to {np.nanmax(x):g} um, y {np.nanmin(y):g} to {np.nanmax(y):g} um")
    else:
        lines.append("  positions   not stored")
    return "\n".join(lines)
