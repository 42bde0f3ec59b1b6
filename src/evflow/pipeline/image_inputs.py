"""The image fields of an experiment: globs expanded, multi-field files split into fields, every file opened
(metadata only) at validation so that an unreadable file, a wrong channel count, fields of different shapes or
a disagreeing pixel size is reported before anything is computed."""

from __future__ import annotations

import glob
import math
import os
import sys
from pathlib import Path

__all__ = ["FieldPath", "image_fields", "check_pixel_sizes", "field_fingerprint"]

_INFO: dict = {}  # str(path) -> (pixel_size_nm or None, field shape (y, x)) of files opened at validation


def _field_path(path, field, n_fields):
    return FieldPath(path, field=field, n_fields=n_fields)


class FieldPath(type(Path())):
    """The path of an image file that holds several fields, with the field it stands for.

    ``str()`` and every file operation are the file's; ``field`` is the field's index among the file's
    fields (as :func:`evflow.read_images` orders them) and ``n_fields`` their number."""

    field = None
    n_fields = 1

    def __new__(cls, *args, field=None, n_fields=1):
        self = super().__new__(cls, *args)
        self.field, self.n_fields = field, n_fields
        return self

    if sys.version_info >= (3, 12):  # pathlib takes the segments in __init__ there
        def __init__(self, *args, field=None, n_fields=1):
            super().__init__(*args)
            if field is not None:
                self.field, self.n_fields = field, n_fields

    def __reduce__(self):
        return _field_path, (str(self), self.field, self.n_fields)

    def __repr__(self):
        return f"FieldPath({str(self)!r}, field={self.field}, n_fields={self.n_fields})"

    def label(self) -> str:
        """``file.ome.tif[3]``: the file and the field."""
        return f"{self}[{self.field}]"


def field_fingerprint(path, fingerprint):
    """``fingerprint(path)`` (of the file), with the field index of a :class:`FieldPath`."""
    fp = fingerprint(path)
    return fp if getattr(path, "field", None) is None else [fp, int(path.field)]


def _open(path: Path, img_s: dict, where: str, problems: list) -> list:
    """The fields of one image file (a FieldPath each when it holds more than one); problems appended."""
    from ..errors import EvflowError
    from ..io.images import read_images

    chans = img_s.get("channels")
    markers = list(chans) if isinstance(chans, list) and chans and all(isinstance(c, str) for c in chans) else None
    try:
        im = read_images([str(path)], markers=markers)  # metadata only: no pixel is read
    except EvflowError as exc:
        msg = str(exc)
        if " channel(s) but " in msg and markers is not None:  # say it in the experiment's words
            n = msg.split(": ")[-1].split(" channel(s)")[0]
            msg = (f"has {n} channel(s), 'imaging.channels' lists {len(markers)} (a plain multi-page TIFF is read as "
                   "fields unless it stores its axes: write it with axes 'CYX')")
        problems.append(f"{where} {path.name}: {msg}")
        return [path]
    except Exception as exc:  # noqa: BLE001 - any failure to open is the file's problem, reported by name
        problems.append(f"{where} {path.name}: cannot be opened as an image ({type(exc).__name__}: {exc})")
        return [path]
    if "t" in im.dims:
        problems.append(f"{where} {path.name}: holds a time-lapse of {im.sizes['t']} frames per field; the "
                        "imaging stage counts single frames (give one file per frame, or save the frames as fields)")
    _INFO[str(path)] = (im.attrs.get("pixel_size_nm"), (im.sizes["y"], im.sizes["x"]))
    n = im.sizes["fov"]
    return [path] if n == 1 else [FieldPath(path, field=k, n_fields=n) for k in range(n)]


def image_fields(entry: str, resolve, img_s, check_files: bool, problems: list, where: str) -> list:
    """The fields an experiment's ``images`` entry stands for: a file, or a glob pattern (sorted) of files,
    each file one field or (a multi-position OME-TIFF) several."""
    p = resolve(entry)
    if any(ch in entry for ch in "*?["):
        found = sorted(Path(f) for f in glob.glob(str(p)))
        if not found:
            if check_files:
                problems.append(f"{where} pattern {entry!r} matches no file (looked for {p})")
            return []
        paths = found
    else:
        if check_files and not p.is_file():
            problems.append(f"{where} file {entry!r} not found (looked at {p})")
            return [p]
        paths = [p]
    if not check_files or not isinstance(img_s, dict) or not img_s:
        return paths
    out = []
    for f in paths:
        out.extend(_open(f, img_s, where, problems))
    return out


def check_pixel_sizes(samples, img_s, src: str, problems: list):
    """Image files opened at validation whose stored pixel sizes disagree (more than 1%) when
    ``imaging.pixel_size_nm`` is not set, or whose field sizes (y, x) differ within one sample."""
    seen = {}
    for s in samples:
        shapes = {}
        for p in dict.fromkeys(str(q) for q in s.images):
            if p not in _INFO:
                continue
            px, shape = _INFO[p]
            shapes.setdefault(shape, p)
            if px is not None:
                seen.setdefault(px, p)
        if len(shapes) > 1:
            (a, pa), (b, pb) = list(shapes.items())[:2]
            problems.append(f"{src}: sample {s.name!r}: fields of different sizes: {os.path.basename(pa)} is "
                            f"{a[0]}x{a[1]} px, {os.path.basename(pb)} is {b[0]}x{b[1]} px")
    if img_s.get("pixel_size_nm") is None and seen:
        sizes = sorted(seen)
        if not math.isclose(sizes[0], sizes[-1], rel_tol=0.01):
            problems.append(f"{src}: the image files store different pixel sizes ({os.path.basename(seen[sizes[0]])}: "
                            f"{sizes[0]:g} nm, {os.path.basename(seen[sizes[-1]])}: {sizes[-1]:g} nm); set "
                            "'imaging.pixel_size_nm' or correct the files")
