"""Camera and sample artefacts handled before spot detection.

- Non-finite pixels (NaN, inf) are filled with the field's median and
  masked: detections touching them are flagged (``masked``).
- Saturated pixels (at or above the saturation level; by default the
  maximum of an integer dtype) are masked: left out of the noise estimate,
  and detections within :func:`flag_radius` px of one are flagged
  (``saturated``); with a background subtraction, also those within the
  background map's reach of a saturated region wider than its element
  (the subtraction rings around it).
- Hot and cold single pixels (sCMOS outliers) are repaired: a pixel that
  departs from its surroundings by more than ``HOT_SNR`` pixel-noise sigmas
  while its four neighbours do not follow (less than ``HOT_RATIO`` of the
  neighbour share an integrated-Gaussian PSF of the field's width would
  give) cannot be a spot; it takes the median of its 8 neighbours.  At the
  field's edge the missing neighbours are mirrored from inside (a pixel is
  never its own neighbour).  Clusters of up to :data:`STUCK_MAX_PX`
  saturated pixels with no PSF flank around them (stuck pixels side by
  side) are repaired by the same rule applied to the cluster.  The rules
  are local, so tiles give the result of the whole field.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_ndi, to_numpy
from ..errors import ConfigError, ImageError
from .noise import mad_sigma

__all__ = ["saturation_level", "pixel_noise_samples", "hot_pixel_mask", "stuck_clusters", "repair_pixels",
           "flag_radius", "HOT_SNR", "HOT_RATIO", "STUCK_MAX_PX"]

#: a hot pixel departs from its ring by more than this many pixel-noise sigmas ...
HOT_SNR = 6.0
#: ... while its brightest 4-neighbour holds less than this share of what a PSF would put there
HOT_RATIO = 0.35
#: saturated clusters of 2 to this many 4-connected pixels are judged as one outlier (a PSF image always has a
#: flank; larger saturated regions are masked and flagged, never repaired)
STUCK_MAX_PX = 4


def saturation_level(image, saturation="auto"):
    """Saturation level (raw units) or None: 'auto' is the dtype maximum of integer images
    (and None for float ones), None disables, a number is taken as given."""
    if saturation is None:
        return None
    if isinstance(saturation, str):
        if saturation != "auto":
            raise ConfigError(f"saturation must be 'auto', None or a number (raw units), got {saturation!r}")
        dt = np.dtype(getattr(image, "dtype", np.float64))
        return float(np.iinfo(dt).max) if dt.kind in "ui" else None
    if isinstance(saturation, bool) or not isinstance(saturation, (int, float, np.integer, np.floating)):
        raise ConfigError(f"saturation must be 'auto', None or a number (raw units), got {saturation!r}")
    return float(saturation)


def flag_radius(sigma: float) -> int:
    """Detections whose maximum lies within this many px of a masked pixel are flagged."""
    return int(math.ceil(2.0 * float(sigma))) + 1


def pixel_noise_samples(photons, *, origin=(0, 0), stride=1, core=None, valid=None):
    """Row-difference samples ``(p[y+1, x] - p[y, x]) / sqrt(2)`` on the global sub-grid (NumPy)."""
    p = to_numpy(photons)
    y0, y1, x0, x1 = core if core is not None else (0, p.shape[0], 0, p.shape[1])
    y1 = min(y1, p.shape[0] - 1)
    oy, ox = int(origin[0]), int(origin[1])
    sy = y0 + (-(oy + y0)) % stride
    sx = x0 + (-(ox + x0)) % stride
    d = (p[sy + 1:y1 + 1:stride, sx:x1:stride].astype(np.float64) - p[sy:y1:stride, sx:x1:stride]) / math.sqrt(2.0)
    if valid is not None:
        v = to_numpy(valid)
        ok = v[sy:y1:stride, sx:x1:stride] & v[sy + 1:y1 + 1:stride, sx:x1:stride]
        d = d[ok]
    return d.ravel()


def _neighbour_share(sigma: float) -> float:
    """Share of the peak pixel's photons in its brightest 4-neighbour, spot centred on the pixel."""
    from ..synth.tirf import integrated_gaussian

    e = integrated_gaussian(np.array([3.0]), float(sigma), 7)[0]
    return float(e[4] / e[3])


def _gather(p, ys, xs, offsets, mode="nearest"):
    """Values of ``p`` at ``(ys + dy, xs + dx)`` for each offset, (n, len(offsets)); outside the image the
    edge is repeated (``mode='nearest'``) or mirrored about the edge pixel (``'mirror'``, for 1-2 px offsets
    of images at least 3 px wide), as ``scipy.ndimage`` names them."""
    h, w = p.shape

    def at(i, n):
        if mode == "mirror":
            i = np.abs(i)
            return np.where(i > n - 1, 2 * (n - 1) - i, i)
        return np.clip(i, 0, n - 1)

    return np.stack([p[at(ys + dy, h), at(xs + dx, w)] for dy, dx in offsets], axis=1)


#: the 16 pixels of the 5x5 ring, the 4-neighbour cross and the 8-neighbourhood, as (dy, dx)
_RING = tuple((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if max(abs(dy), abs(dx)) == 2)
_CROSS = ((-1, 0), (0, -1), (0, 1), (1, 0))
_EIGHT = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


def _rank_at(p, ys, xs, offsets):
    """The rank filter ``scipy.ndimage.median_filter`` computes over ``offsets`` (the element at sorted
    index ``len // 2``: the upper median of an even count), at the given pixels only."""
    vals = _gather(p, ys, xs, offsets)
    k = len(offsets) // 2
    return np.partition(vals, k, axis=1)[:, k]


def hot_pixel_mask(photons, sigma, pixel_noise, ndi=None, *, snr=HOT_SNR, ratio=HOT_RATIO):
    """Boolean map of hot (+) and cold (-) single-pixel outliers of a 2-D photon image (NumPy).

    A pixel is hot when it exceeds the median of its 5x5 ring (``base``) by more than ``snr`` pixel-noise
    sigmas while its brightest 4-neighbour is less than ``ratio`` of a PSF's neighbour share above
    ``base`` (cold: the mirror rule).  The ring repeats the field's edge (mode 'nearest'); the 4-neighbours
    mirror it (mode 'mirror'), so an edge pixel is not its own neighbour.  The ring median is computed only
    where the pixel departs that much from the minimum (maximum) of its 5x5 box, a bound the ring median
    cannot pass, so the result is that of the rule over the whole field (``scipy.ndimage`` filters with
    those modes) at a fraction of the cost.  ``ndi`` is accepted for callers that pass their ndimage module; it is not needed."""
    p = to_numpy(photons).astype(np.float32, copy=False)
    if not pixel_noise > 0 or p.shape[0] < 5 or p.shape[1] < 5:
        return np.zeros(p.shape, bool)
    ndi5 = get_ndi("numpy")  # the 5x5 box extremes (compiled square filters, mode 'nearest' as the rule's)
    t = np.float32(snr * pixel_noise)  # the comparisons of the rule run in float32
    may_hot = (p - ndi5.minimum_filter(p, size=5, mode="nearest")) > t
    may_cold = (p - ndi5.maximum_filter(p, size=5, mode="nearest")) < -t
    ys, xs = np.nonzero(may_hot | may_cold)
    out = np.zeros(p.shape, bool)
    if not len(ys):
        return out
    base = _rank_at(p, ys, xs, _RING)
    cross = _gather(p, ys, xs, _CROSS, mode="mirror")
    e0 = p[ys, xs] - base
    share = np.float32(ratio * _neighbour_share(sigma))
    hot = (e0 > t) & ((cross.max(axis=1) - base) < share * e0)
    cold = (e0 < -t) & ((cross.min(axis=1) - base) > share * e0)
    out[ys, xs] = hot | cold
    return out


def stuck_clusters(photons, sat, sigma, pixel_noise, *, snr=HOT_SNR, ratio=HOT_RATIO, max_px=STUCK_MAX_PX):
    """Boolean map of the pixels of small saturated clusters that cannot be a PSF image (NumPy).

    A 4-connected cluster of 2 to ``max_px`` saturated pixels is stuck when its dimmest pixel exceeds the
    median of the ring 2 px around it (``base``) by more than ``snr`` pixel-noise sigmas while its
    brightest 4-neighbour outside it is less than ``ratio`` of a PSF's neighbour share above ``base``: the
    rule of :func:`hot_pixel_mask` for a cluster.  A saturated vesicle has a flank just below saturation
    (a PSF spreads any object over its neighbours), and stuck pixels side by side have none.  Single
    pixels are :func:`hot_pixel_mask`'s.  The rule sees only 2 px around each cluster, so it is local."""
    p = to_numpy(photons).astype(np.float32, copy=False)
    sat = np.asarray(to_numpy(sat), bool)
    out = np.zeros(p.shape, bool)
    if not pixel_noise > 0 or not sat.any() or p.shape[0] < 5 or p.shape[1] < 5:
        return out
    import scipy.ndimage as sndi

    lab, n = sndi.label(sat)
    size = np.bincount(lab.ravel(), minlength=n + 1)
    small = np.nonzero((size >= 2) & (size <= max_px))[0]
    if not len(small):
        return out
    t = np.float32(snr * pixel_noise)
    share = np.float32(ratio * _neighbour_share(sigma))
    cross = sndi.generate_binary_structure(2, 1)
    h, w = p.shape
    objects = sndi.find_objects(lab)
    for k in small:
        sl = objects[k - 1]
        y0, x0 = max(sl[0].start - 2, 0), max(sl[1].start - 2, 0)
        y1, x1 = min(sl[0].stop + 2, h), min(sl[1].stop + 2, w)
        c = lab[y0:y1, x0:x1] == k
        v = p[y0:y1, x0:x1]
        near = sndi.binary_dilation(c, cross) & ~c
        ring = sndi.binary_dilation(c, np.ones((5, 5), bool)) & ~sndi.binary_dilation(c, np.ones((3, 3), bool))
        base = np.float32(np.median(v[ring]))
        e0 = v[c].min() - base
        if e0 > t and (v[near].max() - base) < share * e0:
            out[y0:y1, x0:x1] |= c
    return out


def repair_pixels(photons, mask, ndi=None):
    """Copy of ``photons`` with ``mask`` pixels replaced by the median of their 8 neighbours (float32; the
    upper median, as ``scipy.ndimage.median_filter`` with mode 'nearest' gives, computed at those pixels)."""
    p = np.array(to_numpy(photons), dtype=np.float32, copy=True)
    mask = np.asarray(mask, bool)
    if not mask.any():
        return p
    ys, xs = np.nonzero(mask)
    p[ys, xs] = _rank_at(p, ys, xs, _EIGHT)
    return p


# ---- field preparation shared by whole-field and tiled detection

def _photons(image, camera, name):
    if camera is not None:
        return camera.to_photons(image)
    return image.astype(np.float32, copy=False)



def _pass0(raw, camera, name, level, origin, stride, core=None):
    """Finite, unsaturated photon samples (for the fill value) and pixel-noise samples on the sub-grid."""
    from .artefacts import pixel_noise_samples

    ph = to_numpy(_photons(to_numpy(raw), camera, "numpy")).astype(np.float32, copy=False)
    rw = to_numpy(raw)
    valid = np.isfinite(ph)
    if level is not None:
        valid &= ~(rw >= level)
    y0, y1, x0, x1 = core if core is not None else (0, ph.shape[0], 0, ph.shape[1])
    sy, sx = y0 + (-(origin[0] + y0)) % stride, x0 + (-(origin[1] + x0)) % stride
    v = ph[sy:y1:stride, sx:x1:stride][valid[sy:y1:stride, sx:x1:stride]]
    d = pixel_noise_samples(ph, origin=origin, stride=stride, core=core, valid=valid)
    return v.astype(np.float64), d


def _field_scalars(parts, shape):
    vals = np.concatenate([p[0] for p in parts])
    if vals.size == 0:
        raise ImageError(f"image of {shape} px has no finite, unsaturated pixel: nothing to detect")
    d = np.concatenate([p[1] for p in parts])
    return float(np.median(vals)), mad_sigma(d) if d.size else 0.0


def _prepare(raw, camera, name, level, fill, pixel_noise, hot_sigma, hot_pixels):
    """Photons with non-finite pixels filled and hot/cold pixels repaired; saturated, non-finite, hot masks."""
    import scipy.ndimage as sndi

    from .artefacts import hot_pixel_mask, repair_pixels, stuck_clusters

    rw = to_numpy(raw)
    ph = np.array(to_numpy(_photons(rw, camera, "numpy")), dtype=np.float32, copy=True)
    finite = np.isfinite(ph)
    sat = (rw >= level) if level is not None else np.zeros(ph.shape, bool)
    sat = np.asarray(sat & finite)
    if not finite.all():
        ph[~finite] = np.float32(fill)
    hot = np.zeros(ph.shape, bool)
    if hot_pixels == "repair":
        # saturated single pixels too (stuck at the camera's maximum: left in, each rang through the filter
        # and its negative ring hid the spots around it); they stay in `sat`, so spots near them are flagged
        hot = (hot_pixel_mask(ph, hot_sigma, pixel_noise, sndi) | stuck_clusters(ph, sat, hot_sigma, pixel_noise)) \
            & finite
        ph = repair_pixels(ph, hot, sndi)
    from ..backend import to_device

    ph = to_device(ph, name, what="field")  # the one crossing of a field (or tile) to the device
    return ph, sat, ~finite, hot


#: the saturated pixels' wide exclusion (the filter's reach) is kept only while it leaves at least this share
#: of the field to sample the noise (scattered saturated pixels would leave none)
MIN_NOISE_SHARE = 0.25


def _noise_masks(sat, invalid, sigma):
    """(narrow, wide) masks of the pixels that may sample the noise (None: all pixels).

    ``narrow``: none within :func:`~evflow.imaging.noise.mask_radius` of a saturated or non-finite pixel
    (non-finite ones are filled with a flat value).  ``wide``: nor within the detection filter's reach of a
    saturated pixel, as a plateau's edge rings through the whole filter (~100 noise sigmas at 16-bit
    saturation) and blocks near it would read as structure and switch the field's noise model; None when
    no pixel is saturated (then ``narrow`` stands)."""
    import scipy.ndimage as sndi

    from .dog import dog_reach
    from .noise import mask_radius

    bad = sat | invalid
    if not bad.any():
        return None, None
    r = mask_radius(sigma)
    narrow = ~sndi.binary_dilation(bad, structure=np.ones((2 * r + 1, 2 * r + 1), bool))
    reach = max(dog_reach(sigma), r)
    wide = narrow & ~sndi.binary_dilation(sat, structure=np.ones((2 * reach + 1, 2 * reach + 1), bool)) \
        if sat.any() else None
    return narrow, wide


def _valid_for_noise(sat, invalid, sigma):
    """The pixels of a whole field that may sample the noise (:func:`_noise_masks`): the wide mask while it
    leaves at least :data:`MIN_NOISE_SHARE` of the field (scattered saturated pixels would leave none),
    else the narrow one.  None: all pixels.  (A tiled field makes the same choice from all its cores.)"""
    narrow, wide = _noise_masks(sat, invalid, sigma)
    return wide if wide is not None and wide.mean() >= MIN_NOISE_SHARE else narrow


def _near(mask, yy, xx, radius):
    if not mask.any() or not len(yy):
        return np.zeros(len(yy), bool)
    import scipy.ndimage as sndi

    d = sndi.maximum_filter(mask.astype(np.uint8), size=2 * int(radius) + 1, mode="constant")
    return d[yy, xx].astype(bool)
