"""Channel registration: affine transform per channel fitted from multicolour beads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, ImageError

__all__ = ["ChannelRegistration", "fit_affine", "register_channels", "register_points"]


def fit_affine(src, dst):
    """Least-squares affine map (2, 3) with ``dst ~ A[:, :2] @ src + A[:, 2]`` for (n, 2) point sets."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if len(src) < 3:
        raise ImageError(f"an affine fit needs at least 3 matched points, got {len(src)}")
    X = np.column_stack([src, np.ones(len(src))])
    sol, *_ = np.linalg.lstsq(X, dst, rcond=None)
    return sol.T.copy()


def _apply(A, pts):
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ A[:, :2].T + A[:, 2]


def _invert(A):
    M = np.linalg.inv(A[:, :2])
    return np.hstack([M, (-M @ A[:, 2])[:, None]])


@dataclass
class ChannelRegistration:
    """Affine maps from each channel's pixel coordinates (y, x) to the reference channel's.

    Attributes
    ----------
    reference : str
    transforms : dict channel -> (2, 3) array (channel -> reference)
    residual_rms_px : dict channel -> float
        RMS distance of matched beads after registration (px).
    n_matched : dict channel -> int
        Beads used in the fit (after outlier rejection).
    """

    reference: str
    transforms: dict
    residual_rms_px: dict = field(default_factory=dict)
    n_matched: dict = field(default_factory=dict)

    def _get(self, channel):
        if channel not in self.transforms:
            raise ConfigError(f"registration has no transform for channel {channel!r}; has {list(self.transforms)}")
        return self.transforms[channel]

    def to_reference(self, channel, yx):
        """Map (n, 2) positions (y, x) in ``channel`` to the reference channel."""
        return _apply(self._get(channel), yx)

    def to_channel(self, channel, yx):
        """Map (n, 2) reference positions into ``channel``'s image."""
        return _apply(_invert(self._get(channel)), yx)

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "transforms": {k: np.asarray(v).tolist() for k, v in self.transforms.items()},
            "residual_rms_px": dict(self.residual_rms_px),
            "n_matched": dict(self.n_matched),
        }

    @classmethod
    def from_dict(cls, d) -> ChannelRegistration:
        return cls(
            reference=d["reference"],
            transforms={k: np.asarray(v, dtype=np.float64).reshape(2, 3) for k, v in d["transforms"].items()},
            residual_rms_px=dict(d.get("residual_rms_px", {})),
            n_matched=dict(d.get("n_matched", {})),
        )

    @classmethod
    def identity(cls, channels) -> ChannelRegistration:
        eye = np.hstack([np.eye(2), np.zeros((2, 1))])
        channels = list(channels)
        return cls(reference=channels[0], transforms={c: eye.copy() for c in channels},
                   residual_rms_px=dict.fromkeys(channels, 0.0), n_matched=dict.fromkeys(channels, 0))


def register_points(moving, reference, *, max_shift_px=10.0, radius_px=1.0, n_iter=5, outlier_mad=4.0):
    """Affine map of ``moving`` points onto ``reference`` points (both (n, 2) y, x).

    A translation is first found as the mode of all displacements within
    ``max_shift_px``; then matching (one-to-one, within ``radius_px``), fit,
    and outlier rejection (residual above ``outlier_mad`` robust sigmas) are
    iterated.

    Returns (A (2, 3), residual RMS px, number matched).
    """
    from scipy.spatial import cKDTree

    from ..metrics import match_points

    mv = np.asarray(moving, dtype=np.float64)
    rf = np.asarray(reference, dtype=np.float64)
    if len(mv) < 3 or len(rf) < 3:
        raise ImageError(f"registration needs at least 3 beads per channel, got {len(mv)} and {len(rf)}")
    pairs = cKDTree(mv).query_ball_tree(cKDTree(rf), max_shift_px)
    disp = np.array([rf[j] - mv[i] for i, js in enumerate(pairs) for j in js])
    if len(disp) == 0:
        raise ImageError(f"no bead pairs within max_shift_px={max_shift_px}")
    step = 0.5
    nb = int(np.ceil(2 * max_shift_px / step)) + 1
    h, ey, ex = np.histogram2d(disp[:, 0], disp[:, 1], bins=nb,
                               range=[[-max_shift_px, max_shift_px], [-max_shift_px, max_shift_px]])
    iy, ix = np.unravel_index(np.argmax(h), h.shape)
    t0 = np.array([0.5 * (ey[iy] + ey[iy + 1]), 0.5 * (ex[ix] + ex[ix + 1])])
    near = np.linalg.norm(disp - t0, axis=1) < 1.5 * step
    t0 = disp[near].mean(axis=0) if near.any() else t0
    A = np.hstack([np.eye(2), t0[:, None]])
    keep_n = 0
    rms = np.nan
    for _ in range(n_iter):
        it_m, it_r, _ = match_points(_apply(A, mv), rf, radius=max(radius_px, 1e-6) * 2)
        if len(it_m) < 3:
            raise ImageError(f"only {len(it_m)} beads could be matched between channels (need >= 3)")
        res = np.linalg.norm(_apply(A, mv[it_m]) - rf[it_r], axis=1)
        med = np.median(res)
        mad = 1.4826 * np.median(np.abs(res - med))
        ok = res <= max(med + outlier_mad * mad, 0.05)
        if ok.sum() < 3:
            ok[:] = True
        A = fit_affine(mv[it_m[ok]], rf[it_r[ok]])
        res = np.linalg.norm(_apply(A, mv[it_m[ok]]) - rf[it_r[ok]], axis=1)
        rms = float(np.sqrt((res**2).mean()))
        keep_n = int(ok.sum())
    return A, rms, keep_n


def register_channels(beads, *, markers=None, reference=0, psf_sigma_px=None, max_shift_px=10.0,
                      radius_px=1.0, camera=None, threshold=None):
    """Fit a :class:`ChannelRegistration` from a multicolour bead field.

    Parameters
    ----------
    beads : array (channel, y, x) or xarray.DataArray with dims (channel, y, x)
        or (fov, channel, y, x) (all fields pooled), or a dict channel ->
        DataFrame of bead positions (``y``, ``x``).
    markers : sequence of str, optional
        Channel names (default from the DataArray or ch0..).
    reference : int or str
        Reference channel.
    psf_sigma_px, camera, threshold : passed to :func:`evflow.detect_spots`.
    max_shift_px, radius_px : float
        Largest expected shift, and the match radius after the shift (px).
    """
    from .detect import detect_spots

    if isinstance(beads, dict):
        tables = dict(beads.items())
        names = list(markers) if markers is not None else list(tables)
    else:
        arr = beads
        names = None
        if hasattr(arr, "dims"):
            if "channel" in arr.coords:
                names = [str(c) for c in arr.channel.values]
            if "fov" not in arr.dims:
                arr = arr.expand_dims("fov")
            arr = arr.transpose("fov", "channel", "y", "x").values
        else:
            arr = np.asarray(arr)
            if arr.ndim == 3:
                arr = arr[None]
        if arr.ndim != 4:
            raise ImageError(f"bead images must be (channel, y, x) or (fov, channel, y, x), got shape {arr.shape}")
        names = list(markers) if markers is not None else (names or [f"ch{i}" for i in range(arr.shape[1])])
        if len(names) != arr.shape[1]:
            raise ImageError(f"{arr.shape[1]} bead channels but {len(names)} markers {names}")
        tables = {}
        for c, name in enumerate(names):
            parts = []
            for f in range(arr.shape[0]):
                df = detect_spots(arr[f, c], psf_sigma_px=psf_sigma_px, camera=camera, threshold=threshold)
                parts.append(df.assign(fov=f))
            import pandas as pd

            tables[name] = pd.concat(parts, ignore_index=True)
    ref = names[reference] if isinstance(reference, int) else reference
    if ref not in tables:
        raise ConfigError(f"reference channel {ref!r} not among {names}")
    out = ChannelRegistration.identity(names)
    out.reference = ref
    for name in names:
        if name == ref:
            out.n_matched[name] = int(len(tables[name]))
            continue
        # fields are matched separately but pooled in one fit
        mv_pts, rf_pts = [], []
        fovs = sorted(set(tables[name].get("fov", [0]))) if "fov" in tables[name] else [None]
        for f in fovs:
            mt = tables[name] if f is None else tables[name][tables[name]["fov"] == f]
            rt = tables[ref] if f is None else tables[ref][tables[ref]["fov"] == f]
            A, rms, n = register_points(mt[["y", "x"]].to_numpy(), rt[["y", "x"]].to_numpy(),
                                        max_shift_px=max_shift_px, radius_px=radius_px)
            from ..metrics import match_points

            i_m, i_r, _ = match_points(_apply(A, mt[["y", "x"]].to_numpy()), rt[["y", "x"]].to_numpy(), 2 * radius_px)
            mv_pts.append(mt[["y", "x"]].to_numpy()[i_m])
            rf_pts.append(rt[["y", "x"]].to_numpy()[i_r])
        mv_all = np.vstack(mv_pts)
        rf_all = np.vstack(rf_pts)
        A = fit_affine(mv_all, rf_all)
        res = np.linalg.norm(_apply(A, mv_all) - rf_all, axis=1)
        med = np.median(res)
        mad = 1.4826 * np.median(np.abs(res - med))
        ok = res <= max(med + 4 * mad, 0.05)
        A = fit_affine(mv_all[ok], rf_all[ok])
        res = np.linalg.norm(_apply(A, mv_all[ok]) - rf_all[ok], axis=1)
        out.transforms[name] = A
        out.residual_rms_px[name] = float(np.sqrt((res**2).mean()))
        out.n_matched[name] = int(ok.sum())
    return out
