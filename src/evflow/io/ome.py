"""OME-XML (the ``ImageDescription`` of an OME-TIFF) parsed with ElementTree: one parser for every reader."""

from __future__ import annotations

__all__ = ["ome_images", "UNIT_NM"]

#: length units of OME ``PhysicalSize*Unit`` / ``Position*Unit`` in nm
UNIT_NM = {"nm": 1.0, "µm": 1e3, "um": 1e3, "\u03bcm": 1e3, "mm": 1e6, "m": 1e9}


def _colour(value) -> str:
    """An OME ``Color`` (signed 32-bit RGBA integer) as ``#rrggbb``; "" when absent or unreadable."""
    try:
        v = int(value) & 0xFFFFFFFF
    except (TypeError, ValueError):
        return ""
    return f"#{(v >> 24) & 255:02x}{(v >> 16) & 255:02x}{(v >> 8) & 255:02x}"


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def ome_images(ome: str) -> list[dict]:
    """Per OME ``Image``: ``name``, ``channels`` (each channel's Name, "" where it has none), ``colors``
    (``#rrggbb`` per channel, "" where none is stored), ``pixel_size_nm`` (y, x), the first plane's stage
    ``position_um`` (x, y) and ``time_increment_s``; [] for unreadable XML."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(ome)
    except (ET.ParseError, TypeError, ValueError):
        return []

    def local(el):
        return el.tag.rsplit("}", 1)[-1]

    out = []
    for img in (el for el in root.iter() if local(el) == "Image"):
        info = {"name": img.get("Name", ""), "channels": [], "colors": [], "pixel_size_nm": None,
                "position_um": None, "time_increment_s": None}
        pix = next((el for el in img if local(el) == "Pixels"), None)
        if pix is not None:
            size = {}
            for ax in "XY":
                v, factor = _float(pix.get(f"PhysicalSize{ax}")), UNIT_NM.get(pix.get(f"PhysicalSize{ax}Unit", "µm"))
                if v is not None and factor:
                    size[ax] = v * factor
            if size:
                info["pixel_size_nm"] = (size.get("Y", size.get("X")), size.get("X", size.get("Y")))
            chans = [ch for ch in pix if local(ch) == "Channel"]
            info["channels"] = [ch.get("Name", "") for ch in chans]
            info["colors"] = [_colour(ch.get("Color")) if ch.get("Color") is not None else "" for ch in chans]
            info["time_increment_s"] = _float(pix.get("TimeIncrement"))
            plane = next((el for el in pix if local(el) == "Plane"), None)
            if plane is not None:
                px, py = _float(plane.get("PositionX")), _float(plane.get("PositionY"))
                if px is not None and py is not None:
                    f = UNIT_NM.get(plane.get("PositionXUnit", "µm"), 1e3) / 1e3
                    info["position_um"] = (px * f, py * f)
        if info["position_um"] is None:  # a StageLabel gives the position of the whole image
            sl = next((el for el in img if local(el) == "StageLabel"), None)
            if sl is not None and _float(sl.get("X")) is not None and _float(sl.get("Y")) is not None:
                f = UNIT_NM.get(sl.get("XUnit", "µm"), 1e3) / 1e3
                info["position_um"] = (_float(sl.get("X")) * f, _float(sl.get("Y")) * f)
        out.append(info)
    return out
