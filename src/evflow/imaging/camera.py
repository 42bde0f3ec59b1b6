"""Camera model: camera counts (ADU) to photons."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ..errors import ConfigError

__all__ = ["Camera", "as_camera"]


@dataclass(frozen=True)
class Camera:
    """Linear camera model: ``photons = (ADU - offset) / (gain * em_gain)``.

    Parameters
    ----------
    offset : float
        Dark offset (ADU), or a per-pixel map passed separately.
    gain : float
        Conversion gain (ADU per photoelectron), > 0.
    em_gain : float
        EMCCD electron-multiplication gain (1 for sCMOS/CCD), >= 1.
    read_noise_e : float
        Read noise (electrons rms), used as the read variance of the fit.
    qe : float
        Quantum efficiency (0..1]; photons = photoelectrons / qe.
    """

    offset: float = 0.0
    gain: float = 1.0
    em_gain: float = 1.0
    read_noise_e: float = 0.0
    qe: float = 1.0

    def __post_init__(self):
        if not self.gain > 0:
            raise ConfigError(f"camera gain must be > 0 ADU per electron, got {self.gain}")
        if not self.em_gain >= 1:
            raise ConfigError(f"camera em_gain must be >= 1, got {self.em_gain}")
        if not 0 < self.qe <= 1:
            raise ConfigError(f"camera qe must be in (0, 1], got {self.qe}")
        if self.read_noise_e < 0:
            raise ConfigError(f"camera read_noise_e must be >= 0, got {self.read_noise_e}")

    @property
    def adu_per_photon(self) -> float:
        return self.gain * self.em_gain * self.qe

    @property
    def readout_var_photons(self) -> float:
        """Read-noise variance in photons^2 (the EM gain divides it out)."""
        return (self.read_noise_e / (self.em_gain * self.qe)) ** 2

    @property
    def excess_variance(self) -> float:
        """Excess noise factor F^2 of the EM register, ``2 - 1 / em_gain``: 1 for sCMOS and CCD cameras, about 2
        at high EM gain (the photon noise's variance is multiplied by it)."""
        return 2.0 - 1.0 / self.em_gain

    def in_photons(self) -> Camera:
        """The same camera for images already in photons: ``to_photons`` keeps them, and the read noise and EM
        excess that photon statistics need (``noise='photon'``, ``noise_excess``) stay."""
        return Camera(offset=0.0, gain=1.0 / (self.em_gain * self.qe), em_gain=self.em_gain,
                      read_noise_e=self.read_noise_e, qe=self.qe)

    def to_photons(self, adu, xp=None):
        """Convert counts (ADU) to photons (float32); works on NumPy, CuPy and dask arrays."""
        import numpy as np

        a = adu.astype(np.float32) if hasattr(adu, "astype") else np.asarray(adu, dtype=np.float32)
        return (a - np.float32(self.offset)) * np.float32(1.0 / self.adu_per_photon)

    def to_dict(self) -> dict:
        return asdict(self)


def as_camera(camera) -> Camera | None:
    """Camera from None, a :class:`Camera`, or a mapping (``offset``, ``gain``, ``em_gain``, ...)."""
    if camera is None or isinstance(camera, Camera):
        return camera
    if isinstance(camera, Mapping):
        allowed = {"offset", "gain", "em_gain", "read_noise_e", "qe"}
        extra = set(camera) - allowed - {"model"}
        if extra:
            raise ConfigError(f"camera: unknown key(s) {sorted(extra)}; expected {sorted(allowed)}")
        return Camera(**{k: float(v) for k, v in camera.items() if k in allowed})
    raise ConfigError(f"camera must be None, a Camera or a dict, got {type(camera).__name__}")
