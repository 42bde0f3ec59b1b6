"""What a TIFF / OME-TIFF / ImageJ file holds, without reading its pixels (``evflow info FILE.tif``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import ImageError

__all__ = ["TIFF_SUFFIXES", "is_tiff", "describe_image", "format_image_info", "ome_images"]

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


_UNIT_NM = {"nm": 1.0, "µm": 1e3, "um": 1e3, "mm": 1e6}


def ome_images(ome: str) -> list[dict]:
    """Per OME ``Image``: ``name``, ``channels`` (each channel's Name, "" where it has none),
    ``pixel_size_nm`` (y, x) and the first plane's stage ``position_um`` (x, y); [] for unreadable XML."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(ome)
    except ET.ParseError:
        return []

    def local(el):
        return el.tag.rsplit("}", 1)[-1]

    out = []
    for img in (el for el in root.iter() if local(el) == "Image"):
        info = {"name": img.get("Name", ""), "channels": [], "pixel_size_nm": None, "position_um": None}
        pix = next((el for el in img if local(el) == "Pixels"), None)
        if pix is not None:
            size = {}
            for ax in "XY":
                v, factor = pix.get(f"PhysicalSize{ax}"), _UNIT_NM.get(pix.get(f"PhysicalSize{ax}Unit", "µm"))
                if v is not None and factor:
                    size[ax] = float(v) * factor
            if size:
                info["pixel_size_nm"] = (size.get("Y", size.get("X")), size.get("X", size.get("Y")))
            info["channels"] = [ch.get("Name", "") for ch in pix if local(ch) == "Channel"]
            plane = next((el for el in pix if local(el) == "Plane"), None)
            if plane is not None and plane.get("PositionX") is not None and plane.get("PositionY") is not None:
                info["position_um"] = (float(plane.get("PositionX")), float(plane.get("PositionY")))
        out.append(info)
    return out


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

    from .images import _pixel_size_from_tiff

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
    from .images import MAX_CHANNELS

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
