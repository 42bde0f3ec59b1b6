"""What a TIFF / OME-TIFF / ImageJ file holds, without reading its pixels (``evflow info FILE.tif``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..errors import ImageError

__all__ = ["TIFF_SUFFIXES", "is_tiff", "describe_image", "format_image_info"]

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


def _ome_images(ome: str) -> list[dict]:
    """Per OME Image: name, channel names, pixel size (nm), first plane's stage position (um)."""
    out = []
    for img in re.finditer(r"<(?:\w+:)?Image\b([^>]*)>(.*?)</(?:\w+:)?Image>", ome, re.S):
        attrs, body = img.group(1), img.group(2)
        name = re.search(r'\bName="([^"]*)"', attrs)
        pix = re.search(r"<(?:\w+:)?Pixels\b([^>]*)>", body)
        info = {"name": name.group(1) if name else "", "channels": [], "pixel_size_nm": None, "position_um": None}
        if pix:
            pa = pix.group(1)
            size = {}
            for ax in "XY":
                m = re.search(rf'PhysicalSize{ax}="([0-9.eE+-]+)"', pa)
                u = re.search(rf'PhysicalSize{ax}Unit="([^"]+)"', pa)
                factor = {"nm": 1.0, "µm": 1e3, "um": 1e3, "mm": 1e6}.get(u.group(1) if u else "µm")
                if m and factor:
                    size[ax] = float(m.group(1)) * factor
            if size:
                info["pixel_size_nm"] = (size.get("Y", size.get("X")), size.get("X", size.get("Y")))
        for ch in re.finditer(r"<(?:\w+:)?Channel\b([^>]*)/?>", body):
            n = re.search(r'\bName="([^"]*)"', ch.group(1))
            i = re.search(r'\bID="([^"]*)"', ch.group(1))
            info["channels"].append(n.group(1) if n else (i.group(1) if i else ""))
        plane = re.search(r"<(?:\w+:)?Plane\b([^>]*)/?>", body)
        if plane:
            px = re.search(r'PositionX="([0-9.eE+-]+)"', plane.group(1))
            py = re.search(r'PositionY="([0-9.eE+-]+)"', plane.group(1))
            if px and py:
                info["position_um"] = (float(px.group(1)), float(py.group(1)))
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
            ome = _ome_images(tf.ome_metadata) if tf.is_ome and tf.ome_metadata else []
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
            lines.append(f"    channels  {n}: {names}")
        if s.pixel_size_nm is not None:
            y, x = s.pixel_size_nm
            lines.append(f"    pixel     {x:g} nm" + ("" if abs(x - y) < 1e-9 else f" (x) x {y:g} nm (y)"))
        else:
            lines.append("    pixel     size not stored (give pixel_size_nm)")
        if s.position_um is not None:
            lines.append(f"    position  x {s.position_um[0]:g} um, y {s.position_um[1]:g} um")
    return "\n".join(lines)
