"""Write Nikon ND2 files (version 3.0: chunks, each a 16-byte header and a name, and a chunk map at the end)
with the metadata NIS-Elements stores for a multi-position time-lapse: image attributes, the experiment's
loops (time outermost, then stage positions), the picture planes (one per channel, named as in the
acquisition's optical configuration), acquisition times, and one frame chunk per (time, position) holding
the channels interleaved per pixel.  The metadata chunks are CLx variants in their XML form, which nd2 reads
as NIS-Elements writes them.  ND2 has no writer in Python; the files are read back by nd2 (through
bioio-nd2) in the tests."""

from __future__ import annotations

import struct
from xml.sax.saxutils import quoteattr

import numpy as np

MAGIC = 0x0ABECEDA
FILE_SIGNATURE = b"ND2 FILE SIGNATURE CHUNK NAME01!"
MAP_SIGNATURE = b"ND2 CHUNK MAP SIGNATURE 0000001!"
FILEMAP_SIGNATURE = b"ND2 FILEMAP SIGNATURE NAME 0001!"
FRAME_NAME = 4072  # a frame chunk's name is padded so that its pixels start 4096 bytes into the chunk


def _variant(name: str, value) -> str:
    """One CLx variant node: a dict is a node of children, a scalar a node with its runtype."""
    if isinstance(value, dict):
        return f"<{name} runtype=\"CLxListVariant\">{''.join(_variant(k, v) for k, v in value.items())}</{name}>"
    runtype = ("bool" if isinstance(value, bool) else "lx_uint32" if isinstance(value, int)
               else "double" if isinstance(value, float) else "CLxStringW")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"<{name} runtype=\"{runtype}\" value={quoteattr(text)}/>"


def _xml(root: str, value: dict) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><variant version="1.0">{_variant(root, value)}</variant>'.encode()


def _chunk(name: bytes, data: bytes, name_length: int | None = None) -> bytes:
    name = name.ljust(name_length or len(name), b"\0")
    return struct.pack("<IIQ", MAGIC, len(name), len(data)) + name + data


def write_nd2(path, frames, *, channels=("CD9", "CD63"), wavelengths=((488, 525), (561, 600)),
              pixel_size_um: float = 0.108, period_ms: float = 500.0, positions_um=None, rgb: bool = False) -> None:
    """``frames``: uint16 (T, P, C, Y, X): T time points of P stage positions (at ``positions_um``, (x, y)
    each; default 100 um apart in x) of C channels (excitation and emission ``wavelengths`` in nm).  ``rgb``:
    the 3 "channels" are the components of one colour camera's plane (``channels`` names that plane)."""
    frames = np.asarray(frames, np.uint16)
    nt, npos, nc, ny, nx = frames.shape
    positions_um = positions_um or [(100.0 * p, 0.0) for p in range(npos)]
    attributes = {"uiWidth": nx, "uiWidthBytes": nx * nc * 2, "uiHeight": ny, "uiComp": nc, "uiBpcInMemory": 16,
                  "uiBpcSignificant": 16, "uiSequenceCount": nt * npos, "eCompression": 2}
    points = {f"i{p:010d}": {"dPosX": float(x), "dPosY": float(y), "dPosZ": 0.0, "dPosName": f"Position {p + 1}"}
              for p, (x, y) in enumerate(positions_um)}
    experiment = {"eType": 1, "uLoopPars": {"uiCount": nt, "dStart": 0.0, "dPeriod": period_ms,
                                            "dDuration": period_ms * nt},
                  "ppNextLevelEx": {"i0000000000": {"eType": 2, "uLoopPars": {"uiCount": npos, "Points": points}}}}
    def spectrum(nm):
        return {"uiCount": 1, "pPoint": {"Point0": {"dWavelength": float(nm), "dTValue": 1.0, "eType": 1}}}

    planes = {f"a{c}": {"sDescription": name, "uiCompCount": 3 if rgb else 1, "uiColor": 0xFF00 >> (8 * c),
                        "pFluorescentProbe": {"m_sName": name, "m_ExcitationSpectrum": spectrum(ex),
                                              "m_EmissionSpectrum": spectrum(em)}}
              for c, (name, (ex, em)) in enumerate(zip(channels[:1] if rgb else channels, wavelengths))}
    picture = {"bCalibrated": True, "dCalibration": float(pixel_size_um), "dXPos": float(positions_um[0][0]),
               "dYPos": float(positions_um[0][1]), "sPicturePlanes": {"uiCount": len(planes), "sPlaneNew": planes}}
    times = np.repeat(np.arange(nt) * period_ms, npos).astype("<f8")
    chunks = [(b"ImageAttributesLV!", _xml("SLxImageAttributes", attributes), None),
              (b"ImageMetadataLV!", _xml("SLxExperiment", experiment), None),
              (b"ImageMetadataSeqLV|0!", _xml("SLxPictureMetadata", picture), None),
              (b"CustomData|AcqTimesCache!", times.tobytes(), None)]
    for i in range(nt * npos):
        t, p = divmod(i, npos)
        pixels = np.ascontiguousarray(frames[t, p].transpose(1, 2, 0), "<u2").tobytes()  # Y, X, C interleaved
        chunks.append((f"ImageDataSeq|{i}!".encode(), struct.pack("<d", times[i]) + pixels, FRAME_NAME))
    out = bytearray(_chunk(FILE_SIGNATURE, b"Ver3.0".ljust(64, b"\0")))
    where = {}
    for name, data, name_length in chunks:
        out += b"\0" * (-len(out) % 4096)  # chunks start on 4 KiB boundaries, as NIS-Elements writes them
        where[name] = (len(out), len(data))
        out += _chunk(name, data, name_length)
    entries = b"".join(name + struct.pack("<QQ", off, size) for name, (off, size) in where.items())
    map_at = len(out)
    out += _chunk(FILEMAP_SIGNATURE, entries + MAP_SIGNATURE + struct.pack("<Q", map_at))
    out += MAP_SIGNATURE + struct.pack("<Q", map_at)
    with open(path, "wb") as f:
        f.write(out)
