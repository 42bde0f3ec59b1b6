"""The FCS HEADER segment: version and the TEXT, DATA and ANALYSIS byte offsets."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from ...errors import FCSError, FCSHeaderError

HEADER_SIZE = 58
_VERSION_RE = re.compile(rb"FCS\d\.\d")


@dataclass(frozen=True)
class _Header:
    version: str
    text: tuple[int, int]
    data: tuple[int, int]
    analysis: tuple[int, int]


def _read_header(buf: bytes, path, base: int) -> _Header:
    if len(buf) < HEADER_SIZE:
        raise FCSHeaderError(
            f"HEADER at byte {base} is truncated: {len(buf)} bytes, expected at least {HEADER_SIZE}", path
        )
    version = buf[:6]
    if not _VERSION_RE.fullmatch(version):
        raise FCSHeaderError(
            f"not an FCS file: HEADER at byte {base} starts with "
            f"{repr(version) if version.startswith(b'FCS') else 'other bytes'}, expected 'FCS2.0', "
            "'FCS3.0', 'FCS3.1' or 'FCS3.2'",
            path,
        )
    names = ("TEXT begin", "TEXT end", "DATA begin", "DATA end", "ANALYSIS begin", "ANALYSIS end")
    values = []
    for i, name in enumerate(names):
        lo = 10 + 8 * i
        raw = buf[lo : lo + 8]
        s = raw.strip()
        if not s:
            values.append(0)
            continue
        if not s.isdigit():
            if i >= 4:  # ANALYSIS offsets are optional and often garbage; ignore them
                values.append(0)
                continue
            raise FCSHeaderError(
                f"HEADER field '{name}' (bytes {base + lo}-{base + lo + 7}) is {raw!r}, expected a "
                "right-justified ASCII integer",
                path,
            )
        values.append(int(s))
    return _Header(version.decode("ascii"), (values[0], values[1]), (values[2], values[3]), (values[4], values[5]))


def _stat_checked(path):
    """(path as str, its ``os.stat_result``), one stat call; :class:`FCSError` when it is missing or a directory."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        raise FCSError(f"file not found: {path}", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise FCSError(f"{path} is a directory, expected an FCS file", path)
    return path, st


def _open_checked(path):
    path, st = _stat_checked(path)
    return path, st.st_size

