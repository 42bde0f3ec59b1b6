"""Synthetic photobleaching traces with known step counts.

:func:`bleaching_traces` simulates background-corrected intensity traces of
spots carrying ``n`` fluorophores: each dye emits ``unit_photons`` per frame
(times a per-dye brightness factor), blinks (two-state on/dark) and bleaches
irreversibly at an exponential time; every frame has Poisson shot noise on
signal plus background, an optional EMCCD excess-noise factor, and Gaussian
camera read noise; the mean background is subtracted, as an annulus estimate
would do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["bleaching_traces", "bleaching_movie", "SyntheticBleaching"]

LEAD_IN = 5  # frames before any dye bleaches


@dataclass
class SyntheticBleaching:
    """Synthetic traces and their truth.

    Attributes
    ----------
    traces : ndarray (frames, traces)
        Background-corrected photons per frame in the spot aperture.
    n_fluorophores : ndarray (traces,)
        True number of dyes (= number of bleaching steps).
    bleach_frames : list of ndarray
        Frame at which each dye bleaches (``n_frames`` when it outlives the movie).
    unit_photons : float
        Mean photons per dye per frame.
    blinked : ndarray of bool (traces,)
        Whether any dye of the trace went dark and came back.
    """

    traces: np.ndarray
    n_fluorophores: np.ndarray
    bleach_frames: list
    unit_photons: float
    blinked: np.ndarray
    bead_yx: np.ndarray | None = None


def bleaching_traces(
    n_fluorophores,
    *,
    n_frames: int = 1000,
    unit_photons: float = 300.0,
    brightness_cv: float = 0.1,
    bleach_time_frames: float | None = None,
    background_photons: float = 400.0,
    read_noise_photons: float = 5.0,
    excess_noise: float = 1.0,
    blink_off_rate: float = 0.0,
    blink_on_rate: float = 0.3,
    seed=None,
) -> SyntheticBleaching:
    """Simulate photobleaching traces.

    Parameters
    ----------
    n_fluorophores : int or sequence of int
        Dyes per trace (one trace per entry).
    n_frames : int
        Frames per trace.
    unit_photons : float
        Mean photons per frame of one dye in the aperture.
    brightness_cv : float
        Coefficient of variation of the per-dye brightness (lognormal).
    bleach_time_frames : float, optional
        Mean bleaching time (frames); default ``n_frames / 7`` (nearly every
        dye bleaches within the movie).
    background_photons : float
        Background photons per frame in the aperture (Poisson; subtracted).
    read_noise_photons : float
        RMS camera read noise in the aperture, in photon units.
    excess_noise : float
        Noise factor on the shot noise (``sqrt(2)`` for an EMCCD at high gain).
    blink_off_rate, blink_on_rate : float
        Per-frame probabilities of an emitting dye going dark and of a dark dye
        coming back (0: no blinking).
    seed : int or numpy Generator, optional

    Returns
    -------
    SyntheticBleaching
    """
    n_fl = np.atleast_1d(np.asarray(n_fluorophores))
    if n_fl.ndim != 1 or (n_fl < 0).any() or not np.issubdtype(n_fl.dtype, np.integer):
        raise ConfigError(f"n_fluorophores must be non-negative integers, got {n_fluorophores!r}")
    if n_frames < 10:
        raise ConfigError(f"n_frames must be >= 10, got {n_frames}")
    if unit_photons <= 0 or background_photons < 0 or read_noise_photons < 0 or excess_noise < 1:
        raise ConfigError("unit_photons must be > 0, background_photons and read_noise_photons >= 0, excess_noise >= 1")
    if not (0 <= blink_off_rate < 1 and 0 < blink_on_rate <= 1):
        raise ConfigError(f"blink rates must be probabilities, got off={blink_off_rate}, on={blink_on_rate}")
    rng = np.random.default_rng(seed)
    signal, bleach, blinked = _dye_signal(rng, n_fl, n_frames, unit_photons, brightness_cv, bleach_time_frames,
                                          blink_off_rate, blink_on_rate)
    counts = rng.poisson(signal + background_photons).astype(np.float64)
    if excess_noise > 1:
        counts += (counts - (signal + background_photons)) * (excess_noise - 1.0)
    counts += rng.normal(0.0, read_noise_photons, counts.shape) if read_noise_photons > 0 else 0.0
    traces = counts - background_photons
    return SyntheticBleaching(traces, n_fl.astype(np.int64), bleach, float(unit_photons), blinked)


def _dye_signal(rng, n_fl, n_frames, unit_photons, brightness_cv, bleach_time_frames, blink_off_rate, blink_on_rate):
    """Noise-free photons per frame (frames, traces), bleaching frames per dye, whether a trace blinked."""
    tau = float(bleach_time_frames) if bleach_time_frames is not None else n_frames / 7.0
    n_tr = n_fl.size
    signal = np.zeros((n_frames, n_tr))
    bleach, blinked = [], np.zeros(n_tr, dtype=bool)
    sig_ln = np.sqrt(np.log1p(brightness_cv**2))
    frames = np.arange(n_frames)
    for i, k in enumerate(n_fl):
        # the shutter opens LEAD_IN frames before the first bleaching can be resolved
        tb = np.minimum(LEAD_IN + np.floor(rng.exponential(tau, k)).astype(np.int64), n_frames)
        bleach.append(np.sort(tb))
        bright = (unit_photons * rng.lognormal(-0.5 * sig_ln**2, sig_ln, k) if brightness_cv > 0
                  else np.full(k, float(unit_photons)))
        for j in range(k):
            on = frames < tb[j]
            if blink_off_rate > 0:
                state = np.ones(n_frames, dtype=bool)
                dark = False
                u = rng.random(n_frames)
                for f in range(tb[j]):
                    dark = (u[f] < blink_off_rate) if not dark else (u[f] >= blink_on_rate)
                    state[f] = not dark
                if not state[: tb[j]].all():
                    blinked[i] = True
                on &= state
            signal[:, i] += bright[j] * on
    return signal, bleach, blinked


def bleaching_movie(
    shape=(64, 64),
    n_fluorophores=(1, 2, 3, 4),
    *,
    n_frames: int = 300,
    unit_photons: float = 400.0,
    brightness_cv: float = 0.1,
    bleach_time_frames: float | None = None,
    background_photons: float = 10.0,
    psf_sigma_px: float = 1.3,
    drift_px_per_frame=(0.0, 0.0),
    min_separation_px: float = 10.0,
    n_beads: int = 0,
    bead_photons: float = 5000.0,
    seed=None,
):
    """A bleaching movie (frames, y, x) in photons: one vesicle per entry of ``n_fluorophores``.

    Vesicles sit at random positions at least ``min_separation_px`` apart and
    8 px from the edges, the whole field drifts linearly by
    ``drift_px_per_frame`` (dy, dx), every pixel has Poisson noise on
    ``background_photons`` plus the PSF-spread signal.  ``n_beads`` fiducial
    beads (``bead_photons`` per frame, never bleaching) drift with the field.

    Returns
    -------
    movie : ndarray (frames, y, x) float64
    yx : ndarray (vesicles, 2)
        Positions in frame 0.
    truth : SyntheticBleaching
        Noise-free signal per vesicle in ``traces`` (total photons per frame).
    """
    from .tirf import integrated_gaussian

    rng = np.random.default_rng(seed)
    n_fl = np.atleast_1d(np.asarray(n_fluorophores))
    H, W = shape
    yx = []
    tries = 0
    while len(yx) < n_fl.size + n_beads:
        p = rng.uniform([8, 8], [H - 8, W - 8])
        if all(np.hypot(*(p - q)) >= min_separation_px for q in yx):
            yx.append(p)
        tries += 1
        if tries > 10000:
            raise ConfigError(f"cannot place {n_fl.size + n_beads} spots {min_separation_px} px apart in {shape}")
    all_yx = np.asarray(yx).reshape(-1, 2)
    yx, bead_yx = all_yx[: n_fl.size], all_yx[n_fl.size :]
    signal, bleach, blinked = _dye_signal(rng, n_fl, n_frames, unit_photons, brightness_cv, bleach_time_frames, 0.0, 0.3)
    emit = np.concatenate([signal, np.full((n_frames, n_beads), float(bead_photons))], axis=1)
    drift = np.asarray(drift_px_per_frame, dtype=np.float64)
    movie = np.empty((n_frames, H, W))
    for t in range(n_frames):
        pos = all_yx + drift * t
        ey = integrated_gaussian(pos[:, 0], psf_sigma_px, H)
        ex = integrated_gaussian(pos[:, 1], psf_sigma_px, W)
        lam = background_photons + np.einsum("n,ny,nx->yx", emit[t], ey, ex)
        movie[t] = rng.poisson(lam)
    return movie, yx, SyntheticBleaching(signal, n_fl.astype(np.int64), bleach, float(unit_photons), blinked, bead_yx)
