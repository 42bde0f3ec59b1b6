"""The scenes of a CZI file as its subblock directory holds them.

bioio's CZI reader takes a file's scenes from the metadata XML
(``Information/Image/Dimensions/S/Scenes``).  A file whose image data hold
more scenes than that list (written by software other than ZEN, which leaves
the list out) is read as its first scene only, silently.  Zeiss's libCZI
(``pylibCZIrw``, a dependency of bioio-czi) reads the scene of every subblock;
:func:`czi_scenes` compares the two and, where the data hold more, reads each
scene lazily through libCZI, one plane per dask task; it gives each scene's
origin in the file's coordinates too, from which the stage positions follow.
"""

from __future__ import annotations

import numpy as np

_DTYPES = {"Gray8": np.uint8, "Gray16": np.uint16, "Gray32Float": np.float32}


def _read_plane(path, scene, rect, plane):
    from pylibCZIrw import czi as pyczi

    with pyczi.open_czi(str(path)) as f:
        return f.read(plane=plane, scene=scene, roi=rect)[..., 0]


def czi_scenes(path, listed: int):
    """The scenes of a CZI file as its subblocks hold them: ``(arrays, origins)``.  ``arrays`` is None when
    they hold no more scenes than the ``listed`` ones, else the lazy (T, C, Z, Y, X) array of each scene, in
    the order of the scenes' indices; ``origins`` is each scene's origin (x, y) in pixels of the file's
    coordinate system (the stage position over the pixel size), None for a file without scenes.  Scenes of
    other than one grey pixel type, or of different sizes, are an ``ImageError`` naming the file."""
    import dask
    import dask.array as da
    from pylibCZIrw import czi as pyczi

    from ..errors import ImageError

    with pyczi.open_czi(str(path)) as f:
        rects = f.scenes_bounding_rectangle_no_pyramid
        box = f.total_bounding_box_no_pyramid
        types = set(f.pixel_types.values())
    origins = [(float(rects[s].x), float(rects[s].y)) for s in sorted(rects)] or None
    if len(rects) <= max(listed, 1):
        return None, origins
    if len(types) != 1 or next(iter(types)) not in _DTYPES:
        raise ImageError(f"{path}: its {len(rects)} scenes are read plane by plane, which needs one grey pixel "
                         f"type ({', '.join(_DTYPES)}); the file has {sorted(types)}")
    dtype = _DTYPES[next(iter(types))]
    sizes = {(r.h, r.w) for r in rects.values()}
    if len(sizes) != 1:
        raise ImageError(f"{path}: its scenes differ in size (Y, X) {sorted(sizes)}; evflow reads scenes of one "
                         "size as fields")
    (h, w), = sizes
    n = {d: box[d][1] - box[d][0] if d in box else 1 for d in "TCZ"}
    read = dask.delayed(_read_plane, pure=True)
    scenes = []
    for s in sorted(rects):
        r = rects[s]
        rect = (r.x, r.y, r.w, r.h)

        def plane(t, c, z, s=s, rect=rect):
            at = {d: box[d][0] + i for d, i in zip("TCZ", (t, c, z)) if d in box}
            return da.from_delayed(read(path, s, rect, at), (h, w), dtype)

        scenes.append(da.stack([da.stack([da.stack([plane(t, c, z) for z in range(n["Z"])])
                                          for c in range(n["C"])]) for t in range(n["T"])]))
    return scenes, origins
