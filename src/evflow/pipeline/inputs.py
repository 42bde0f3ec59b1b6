"""What the experiment's input files hold, for validation: FCS channels and TEXT, TIFF channel counts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["fcs_sample", "fcs_without_volume", "check_channels", "tiff_channels"]

_SAMPLE_CACHE: dict = {}


def fcs_sample(path: Path):
    """The FCSSample of ``path``, HEADER and TEXT only (cached by path, mtime and size), or None when unreadable."""
    try:
        st = os.stat(path)
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in _SAMPLE_CACHE:
            from ..io.fcs import read_fcs

            _SAMPLE_CACHE[key] = read_fcs(path)
        return _SAMPLE_CACHE[key]
    except Exception:
        return None


def fcs_without_volume(path: Path) -> bool:
    """True when ``path`` reads as FCS and has no ``$VOL``.  A ``$VOL`` that is there but unusable
    (0, not a number) is not flagged here: running the sample reports it."""
    from ..errors import FCSError

    fcs = fcs_sample(path)
    if fcs is None:
        return False
    try:
        return fcs.volume_nl() is None
    except FCSError:
        return False


def check_channels(path: Path, needed: Mapping[str, str], problems: list, src: str, sample_key=None):
    """Append a problem for each channel of ``needed`` (channel -> key that needs it) missing from ``path``."""
    from ..io.fcs import read_fcs

    try:
        s = read_fcs(path)
    except Exception as exc:
        problems.append(f"{src}: '{sample_key or 'file'}' {path.name} cannot be read as FCS: {exc}")
        return
    for ch, key in needed.items():
        try:
            s.channel_index(ch)
        except Exception:
            problems.append(
                f"{src}: '{key}' channel {ch!r} is not in {sample_key + ' ' if sample_key else ''}{path.name} "
                f"(channels: {', '.join(s.channels)})"
            )


def tiff_channels(path: Path):
    """Number of channels of a TIFF's first series (None when unreadable)."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            shape = tf.series[0].shape
        return 1 if len(shape) == 2 else int(shape[-3])
    except Exception:
        return None
