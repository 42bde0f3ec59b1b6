"""Write Leica LIF files (version 2: a UTF-16 XML header, then one memory block per image) with the layout
LAS X gives a multi-position widefield acquisition: one ``Element`` per position under the file's root
element, each image's channels as planes at ``BytesInc`` offsets, frames (DimID 4) outermost.  LIF has no
writer in Python; the files are read back by liffile (through bioio-lif) in the tests."""

from __future__ import annotations

import struct

import numpy as np


def _channels(nc: int, plane: int, luts) -> str:
    return "".join(
        f'<ChannelDescription DataType="0" ChannelTag="0" Resolution="16" NameOfMeasuredQuantity="" Min="0" '
        f'Max="65535" Unit="" LUTName="{luts[c]}" IsLUTInverted="0" BytesInc="{c * plane}" BitInc="0"/>'
        for c in range(nc))


def _dimension(dim_id: int, n: int, length: float, unit: str, bytes_inc: int) -> str:
    return (f'<DimensionDescription DimID="{dim_id}" NumberOfElements="{n}" Origin="0" Length="{length!r}" '
            f'Unit="{unit}" BitInc="0" BytesInc="{bytes_inc}"/>')


def write_lif(path, positions, *, luts=("Green", "Red"), pixel_size_m: float = 1.08e-7,
              frame_interval_s: float = 1.0) -> None:
    """``positions``: one uint16 array (T, C, Y, X) per stage position.  Leica's ``Length`` is the distance
    between the first and the last pixel's centres."""
    blocks, elements = [("MemBlock_0", b"")], []
    for k, a in enumerate(positions):
        nt, nc, ny, nx = a.shape
        plane = ny * nx * 2
        dims = (_dimension(1, nx, pixel_size_m * (nx - 1), "m", 2)
                + _dimension(2, ny, pixel_size_m * (ny - 1), "m", 2 * nx))
        if nt > 1:
            dims += _dimension(4, nt, frame_interval_s * (nt - 1), "s", nc * plane)
        block = f"MemBlock_{k + 1}"
        elements.append(
            f'<Element Name="Position {k + 1}" Visibility="1" CopyOption="1" '
            f'UniqueID="00000000-0000-0000-0000-{k:012d}"><Data><Image TextDescription=""><ImageDescription>'
            f'<Channels>{_channels(nc, plane, luts)}</Channels><Dimensions>{dims}</Dimensions>'
            f'</ImageDescription></Image></Data><Memory Size="{a.nbytes}" MemoryBlockID="{block}"/>'
            '<Children/></Element>')
        blocks.append((block, np.ascontiguousarray(a, "<u2").tobytes()))
    xml = ('<LMSDataContainerHeader Version="2"><Element Name="chip" Visibility="1" CopyOption="1" '
           'UniqueID="00000000-0000-0000-0000-ffffffffffff"><Data><Experiment Path="chip.lif"/></Data>'
           f'<Memory Size="0" MemoryBlockID="MemBlock_0"/><Children>{"".join(elements)}</Children>'
           '</Element></LMSDataContainerHeader>')
    with open(path, "wb") as f:
        text = xml.encode("utf-16-le")
        f.write(struct.pack("<IIBI", 0x70, len(text) + 5, 0x2A, len(xml)) + text)
        for name, data in blocks:
            f.write(struct.pack("<IIBQBI", 0x70, 0, 0x2A, len(data), 0x2A, len(name)) + name.encode("utf-16-le"))
            f.write(data)
