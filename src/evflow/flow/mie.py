"""Mie scattering of solid and coated spheres, integrated over a detector's collection cone.

The scattering coefficients follow Bohren & Huffman, *Absorption and
Scattering of Light by Small Particles* (1983): ``a_n, b_n`` of a homogeneous
sphere (eq. 4.53) and of a coated sphere (eq. 8.2, the BHCOAT formulation)
with Riccati-Bessel functions from :mod:`scipy.special`.  The amplitude
functions ``S1, S2`` (eq. 4.74) give the differential scattering cross-section

* unpolarised light: ``dC/dOmega = (|S1|^2 + |S2|^2) / (2 k^2)``
* light polarised along ``phi_pol``:
  ``dC/dOmega = (|S2|^2 cos^2(phi - phi_pol) + |S1|^2 sin^2(phi - phi_pol)) / k^2``

with ``k = 2 pi n_medium / wavelength``.  :func:`collected_cross_section`
integrates it over a cone of directions around the detector's axis (forward
scatter: axis 0 deg; side scatter: axis 90 deg), optionally with a central
obscuration, by Gauss-Legendre quadrature.  Solid-sphere results agree with
``miepython`` (tested).

Lengths are in nanometres, cross-sections in nm^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CalibrationError

__all__ = [
    "Sphere",
    "CoatedSphere",
    "Detector",
    "POLYSTYRENE",
    "SILICA",
    "VESICLE",
    "mie_coefficients",
    "amplitude_functions",
    "scattering_cross_section",
    "collected_cross_section",
]


@dataclass(frozen=True)
class Sphere:
    """A homogeneous sphere of refractive index ``refractive_index`` (may be complex, n + ik)."""

    refractive_index: complex = 1.59

    def layers(self, diameter_nm: float):
        """(core radius nm, core index, outer radius nm, shell index)."""
        r = diameter_nm / 2.0
        return r, self.refractive_index, r, self.refractive_index


@dataclass(frozen=True)
class CoatedSphere:
    """A core-shell sphere, e.g. an extracellular vesicle: lumen (core) inside a membrane (shell).

    The diameter is the outer diameter; the shell is ``shell_thickness_nm``
    thick (capped at the radius).
    """

    core_index: complex = 1.38
    shell_index: complex = 1.48
    shell_thickness_nm: float = 5.0

    def layers(self, diameter_nm: float):
        b = diameter_nm / 2.0
        a = max(b - self.shell_thickness_nm, 0.0)
        return a, self.core_index, b, self.shell_index


#: polystyrene beads (n = 1.59 near 590 nm; about 1.605 at 488 nm)
POLYSTYRENE = Sphere(1.59)
#: silica beads
SILICA = Sphere(1.46)
#: a typical EV: core 1.38, 5 nm membrane of 1.48
VESICLE = CoatedSphere(1.38, 1.48, 5.0)


@dataclass(frozen=True)
class Detector:
    """A scatter detector: a cone of directions around ``axis_deg`` from the beam.

    Parameters
    ----------
    axis_deg : float
        Angle of the detector axis from the beam direction (0: forward
        scatter, 90: side scatter).
    half_angle_deg : float
        Collection half-angle (``asin(NA / n_medium)`` for a lens of numerical
        aperture NA in the medium).
    inner_half_angle_deg : float
        Half-angle of a central obscuration (e.g. the FSC beam stop), 0 for none.
    azimuth_deg : float
        Azimuth of the detector axis, measured from the x axis (the
        polarisation direction of polarised light), for ``axis_deg != 0``.
    polarization_deg : float or None
        Direction of the incident electric field from the x axis; None for
        unpolarised light.
    """

    axis_deg: float = 90.0
    half_angle_deg: float = 53.0
    inner_half_angle_deg: float = 0.0
    azimuth_deg: float = 90.0
    polarization_deg: float | None = None

    def __post_init__(self):
        if not 0 <= self.inner_half_angle_deg < self.half_angle_deg <= 180:
            raise CalibrationError(
                f"detector angles: need 0 <= inner_half_angle_deg ({self.inner_half_angle_deg}) < "
                f"half_angle_deg ({self.half_angle_deg}) <= 180"
            )

    @classmethod
    def side_scatter(cls, half_angle_deg: float = 53.0, **kw) -> Detector:
        """A side-scatter detector at 90 deg (default half-angle 53 deg: NA 1.07 in water... i.e. a high-NA objective)."""
        return cls(axis_deg=90.0, half_angle_deg=half_angle_deg, **kw)

    @classmethod
    def forward_scatter(cls, half_angle_deg: float = 15.0, inner_half_angle_deg: float = 1.0, **kw) -> Detector:
        """A forward-scatter detector on the beam axis with a central beam stop."""
        return cls(axis_deg=0.0, half_angle_deg=half_angle_deg, inner_half_angle_deg=inner_half_angle_deg, **kw)

    def directions(self, n_polar: int = 24, n_azimuth: int = 48):
        """Quadrature directions: (cos theta, phi, weight in steradians) about the beam axis."""
        c_in, c_out = np.cos(np.radians(self.inner_half_angle_deg)), np.cos(np.radians(self.half_angle_deg))
        t, w = np.polynomial.legendre.leggauss(n_polar)
        cos_a = 0.5 * (c_in - c_out) * t + 0.5 * (c_in + c_out)
        w_a = 0.5 * (c_in - c_out) * w
        beta = (np.arange(n_azimuth) + 0.5) * (2 * np.pi / n_azimuth)
        sin_a = np.sqrt(np.clip(1 - cos_a**2, 0, None))
        # directions in the detector frame (local z = detector axis)
        loc = np.stack(
            [
                (sin_a[:, None] * np.cos(beta)[None, :]).ravel(),
                (sin_a[:, None] * np.sin(beta)[None, :]).ravel(),
                np.repeat(cos_a, n_azimuth),
            ]
        )
        weights = np.repeat(w_a, n_azimuth) * (2 * np.pi / n_azimuth)
        th, ph = np.radians(self.axis_deg), np.radians(self.azimuth_deg)
        ez = np.array([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)])
        ref = np.array([0.0, 0.0, 1.0]) if abs(ez[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        ex = np.cross(ref, ez)
        ex /= np.linalg.norm(ex)
        ey = np.cross(ez, ex)
        d = ex[:, None] * loc[0] + ey[:, None] * loc[1] + ez[:, None] * loc[2]
        mu = np.clip(d[2], -1.0, 1.0)
        phi = np.arctan2(d[1], d[0])
        return mu, phi, weights


def _riccati(n, z):
    """psi_n, psi'_n, chi_n, chi'_n for orders ``n`` (array) at ``z``; chi_n = -z y_n(z)."""
    from scipy.special import spherical_jn, spherical_yn

    jn, jnp = spherical_jn(n, z), spherical_jn(n, z, derivative=True)
    yn, ynp = spherical_yn(n, z), spherical_yn(n, z, derivative=True)
    return z * jn, jn + z * jnp, -z * yn, -(yn + z * ynp)


def _n_terms(y: float) -> int:
    return int(np.round(abs(y) + 4.05 * abs(y) ** (1 / 3) + 2)) if y > 0 else 1


def mie_coefficients(particle, diameter_nm: float, wavelength_nm: float, medium_index: float = 1.333):
    """Mie coefficients ``a_n, b_n`` (n = 1..N) of a solid or coated sphere.

    Parameters
    ----------
    particle : Sphere or CoatedSphere
    diameter_nm : float
        Outer diameter (nm).
    wavelength_nm : float
        Vacuum wavelength (nm).
    medium_index : float
        Refractive index of the surrounding medium.

    Returns
    -------
    a, b : complex ndarray (N,)
    """
    if diameter_nm <= 0 or wavelength_nm <= 0 or medium_index <= 0:
        raise CalibrationError(
            f"Mie: diameter ({diameter_nm} nm), wavelength ({wavelength_nm} nm) and medium index ({medium_index}) must be > 0"
        )
    k = 2 * np.pi * medium_index / wavelength_nm
    ra, n1, rb, n2 = particle.layers(diameter_nm)
    m1, m2 = complex(n1) / medium_index, complex(n2) / medium_index
    x, y = k * ra, k * rb
    N = _n_terms(y)
    n = np.arange(1, N + 1)
    real = abs(m1.imag) < 1e-15 and abs(m2.imag) < 1e-15
    cast = (lambda v: v.real) if real else (lambda v: v)
    psi_y, dpsi_y, chi_y, dchi_y = _riccati(n, y)
    xi_y, dxi_y = psi_y - 1j * chi_y, dpsi_y - 1j * dchi_y
    m2y = cast(m2 * y)
    psi_m2y, dpsi_m2y, chi_m2y, dchi_m2y = _riccati(n, m2y)
    if x > 0 and m1 != m2:
        m1x, m2x = cast(m1 * x), cast(m2 * x)
        psi_m1x, dpsi_m1x, _, _ = _riccati(n, m1x)
        psi_m2x, dpsi_m2x, chi_m2x, dchi_m2x = _riccati(n, m2x)
        A = (m2 * psi_m2x * dpsi_m1x - m1 * dpsi_m2x * psi_m1x) / (m2 * chi_m2x * dpsi_m1x - m1 * dchi_m2x * psi_m1x)
        B = (m2 * psi_m1x * dpsi_m2x - m1 * psi_m2x * dpsi_m1x) / (m2 * dchi_m2x * psi_m1x - m1 * dpsi_m1x * chi_m2x)
    else:
        A = B = np.zeros(N)
    fa = dpsi_m2y - A * dchi_m2y
    ga = psi_m2y - A * chi_m2y
    fb = dpsi_m2y - B * dchi_m2y
    gb = psi_m2y - B * chi_m2y
    a = (psi_y * fa - m2 * dpsi_y * ga) / (xi_y * fa - m2 * dxi_y * ga)
    b = (m2 * psi_y * fb - dpsi_y * gb) / (m2 * xi_y * fb - dxi_y * gb)
    return np.asarray(a, complex), np.asarray(b, complex)


def _pi_tau(mu: np.ndarray, N: int):
    mu = np.asarray(mu, float)
    pi = np.zeros((N, mu.size))
    tau = np.zeros((N, mu.size))
    p_prev, p = np.zeros_like(mu), np.ones_like(mu)
    for i in range(N):
        n = i + 1
        if n > 1:
            p, p_prev = ((2 * n - 1) * mu * p - n * p_prev) / (n - 1), p
        pi[i] = p
        tau[i] = n * mu * p - (n + 1) * p_prev
    return pi, tau


def amplitude_functions(particle, diameter_nm, wavelength_nm, medium_index, mu):
    """Scattering amplitudes ``S1, S2`` at ``mu = cos(theta)`` (Bohren & Huffman normalisation)."""
    a, b = mie_coefficients(particle, diameter_nm, wavelength_nm, medium_index)
    N = a.size
    n = np.arange(1, N + 1)
    f = (2 * n + 1) / (n * (n + 1.0))
    pi, tau = _pi_tau(np.atleast_1d(mu), N)
    s1 = (f * a) @ pi + (f * b) @ tau
    s2 = (f * a) @ tau + (f * b) @ pi
    return s1, s2


def scattering_cross_section(particle, diameter_nm, wavelength_nm=488.0, medium_index=1.333):
    """Total scattering cross-section (nm^2), ``2 pi / k^2 * sum (2n+1)(|a_n|^2 + |b_n|^2)``."""
    d = np.atleast_1d(np.asarray(diameter_nm, float))
    k = 2 * np.pi * medium_index / wavelength_nm
    out = np.empty(d.shape)
    for i, di in enumerate(d.ravel()):
        a, b = mie_coefficients(particle, float(di), wavelength_nm, medium_index)
        n = np.arange(1, a.size + 1)
        out.ravel()[i] = 2 * np.pi / k**2 * np.sum((2 * n + 1) * (np.abs(a) ** 2 + np.abs(b) ** 2))
    return out if np.ndim(diameter_nm) else float(out[0])


def collected_cross_section(
    particle,
    diameter_nm,
    wavelength_nm: float = 488.0,
    medium_index: float = 1.333,
    detector: Detector | None = None,
    *,
    n_polar: int = 24,
    n_azimuth: int = 48,
):
    """Scattering cross-section collected by ``detector`` (nm^2) for each diameter.

    Parameters
    ----------
    particle : Sphere or CoatedSphere
    diameter_nm : float or array
        Outer diameters (nm).
    wavelength_nm : float
        Vacuum wavelength of the laser (nm).
    medium_index : float
        Refractive index of the medium (water 1.333, PBS ~1.334).
    detector : Detector
        Collection geometry; default :meth:`Detector.side_scatter`.
    n_polar, n_azimuth : int
        Quadrature points over the cone.

    Returns
    -------
    float or ndarray (nm^2)
    """
    det = Detector.side_scatter() if detector is None else detector
    mu, phi, w = det.directions(n_polar, n_azimuth)
    d = np.atleast_1d(np.asarray(diameter_nm, float))
    k = 2 * np.pi * medium_index / wavelength_nm
    if det.polarization_deg is None:
        w1 = w2 = 0.5 * w
    else:
        dphi = phi - np.radians(det.polarization_deg)
        w1, w2 = w * np.sin(dphi) ** 2, w * np.cos(dphi) ** 2
    N_max = _n_terms(k * d.max() / 2.0) + 2 if d.size else 1
    pi, tau = _pi_tau(mu, N_max)
    out = np.empty(d.size)
    for i, di in enumerate(d.ravel()):
        a, b = mie_coefficients(particle, float(di), wavelength_nm, medium_index)
        N = a.size
        if N > N_max:  # cannot happen for d <= d.max(), but stay safe
            pi, tau = _pi_tau(mu, N)
            N_max = N
        n = np.arange(1, N + 1)
        f = (2 * n + 1) / (n * (n + 1.0))
        s1 = (f * a) @ pi[:N] + (f * b) @ tau[:N]
        s2 = (f * a) @ tau[:N] + (f * b) @ pi[:N]
        out[i] = (np.abs(s1) ** 2 @ w1 + np.abs(s2) ** 2 @ w2) / k**2
    out = out.reshape(d.shape)
    return out if np.ndim(diameter_nm) else float(out[0])
