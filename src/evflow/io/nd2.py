"""ND2 files through ``nd2``, the reader bioio-nd2 wraps, opened once for all their stage positions.

bioio-nd2 builds a scene's array by converting the metadata of every frame of the file to OME, once per
scene: opening a 60-position file took 4.3 s (about 70 ms a position, growing with the file), a
400-position chip minutes.  ``nd2`` itself opens the file once for its metadata, and each position is read
lazily (one dask task per position and time point, which opens the file and reads its frames only), with
the channel names, pixel size, frame interval and stage positions of the file's experiment.  (One field of
a 400-position file of 64x64 frames: 0.15 s, against 0.39 s through ``nd2``'s own dask array, measured on a
loaded machine.)
"""

from __future__ import annotations

import numpy as np

from ..errors import ImageError

_LOOPS = "PTZ"  # the axes nd2 gives for experiment loops that evflow knows (positions, time, z)


def _read_frames(path, seq, frame_axes, frame_shape):
    """The frames at sequence indices ``seq`` (z planes of one position and time point), as (C, Z, Y, X).
    A frame nd2 reads is a view of the file's memory map: it is copied before the file is closed."""
    import nd2

    order = [frame_axes.index(a) for a in ("C", "Y", "X")]
    with nd2.ND2File(str(path)) as f:
        return np.stack([np.asarray(f.read_frame(i)).reshape(frame_shape).transpose(order) for i in seq], axis=1)


def nd2_scenes(path):
    """The positions of an ND2 file: a list of lazy (T, C, Z, Y, X) arrays, one per stage position (a task
    per position and time point), the channel names, the pixel size (um, None when uncalibrated), the frame
    interval (s, None when unknown) and each position's stage (x, y) in um ((nan, nan) when the experiment
    has no position loop)."""
    import dask
    import dask.array as da
    import nd2

    with nd2.ND2File(str(path)) as f:
        sizes = dict(f.sizes)
        index = [dict(i) for i in f.loop_indices]
        dtype = f.dtype
        names = [c.channel.name for c in (f.metadata.channels or [])]
        px = f.voxel_size().x if f.metadata.channels else None
        loops = {loop.type: loop for loop in f.experiment}
    unknown = [a for a in sizes if a not in _LOOPS + "CYXS"]
    if unknown:
        raise ImageError(f"{path}: its axes {sizes} include {unknown}, which evflow does not read (it reads "
                         "positions P, time T, z planes Z, channels C, Y and X)")
    frame_axes = [a for a in sizes if a in "CYXS"]
    if "S" in sizes:  # an RGB camera's components are the channels
        if sizes.get("C", 1) > 1:
            raise ImageError(f"{path}: its frames have both channels and RGB components {sizes}; evflow reads "
                             "one of the two as channels")
        frame_axes = ["C" if a == "S" else a for a in frame_axes if a != "C"]  # a C of 1 drops in the reshape
        sizes = {("C" if a == "S" else a): n for a, n in sizes.items() if a != "C"}
        names = []
    if "C" not in frame_axes:
        frame_axes, sizes = ["C"] + frame_axes, {"C": 1, **sizes}
    n = {a: sizes.get(a, 1) for a in _LOOPS}
    seq = {(i.get("P", 0), i.get("T", 0), i.get("Z", 0)): k for k, i in enumerate(index)}
    missing = [key for key in np.ndindex(n["P"], n["T"], n["Z"]) if key not in seq]
    if missing:
        raise ImageError(f"{path}: its experiment {n} has no frame for (position, time, z) {missing[0]} "
                         f"({len(missing)} missing); evflow reads complete acquisitions")
    read = dask.delayed(_read_frames, pure=True)
    shape = (sizes["C"], n["Z"], sizes["Y"], sizes["X"])
    frame_shape = tuple(sizes[a] for a in frame_axes)
    datas = [da.stack([da.from_delayed(read(path, [seq[p, t, z] for z in range(n["Z"])], frame_axes, frame_shape),
                                       shape, dtype) for t in range(n["T"])]) for p in range(n["P"])]
    interval = None
    if "TimeLoop" in loops and loops["TimeLoop"].parameters.periodMs > 0:
        interval = loops["TimeLoop"].parameters.periodMs / 1e3
    elif "NETimeLoop" in loops and len(loops["NETimeLoop"].parameters.periods) == 1:
        period = loops["NETimeLoop"].parameters.periods[0].periodMs
        interval = period / 1e3 if period > 0 else None
    stage = [(np.nan, np.nan)] * n["P"]
    points = loops["XYPosLoop"].parameters.points if "XYPosLoop" in loops else []
    if len(points) == n["P"]:
        stage = [(float(p.stagePositionUm.x), float(p.stagePositionUm.y)) for p in points]
    return datas, names, px, interval, stage
