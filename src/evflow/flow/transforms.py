"""Scale transformations of Gating-ML 2.0: linear, log, asinh, logicle, hyperlog (and ratio).

Every transform maps data values (linear channel units, after ``$PnE``/``$PnG``
scaling and compensation) to the Gating-ML "display" scale, where the top of
scale ``T`` maps to 1.  Parameters keep the names of the specification:

========== ===================================================================
flin       ``y = (x + A) / (T + A)``
flog       ``y = log10(x / T) / M + 1``          (NaN for ``x <= 0``)
fasinh     ``y = (asinh(x sinh(M ln10) / T) + A ln10) / ((M + A) ln10)``
logicle    ``y = root of B(y) = x``, Parks/Moore biexponential
hyperlog   ``y = root of H(y) = x``, Bagwell's hyperlog
fratio     ``y = A (x1 - B) / (x2 - C)``  (a new dimension from two channels)
========== ===================================================================

Each transform has ``.apply(x)`` and ``.inverse(y)`` that work on NumPy and
CuPy arrays (the module of the input is used), ``.id`` (the Gating-ML
``transformation`` id, or None) and compares equal by kind and parameters.
Logicle and hyperlog use a dense lookup table built once per parameter set
(:mod:`evflow.kernels.transforms`); ``.apply_exact`` gives the root-finding
reference.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import array_module
from ..errors import GatingError
from ..kernels._registry import renamed_impl

__all__ = [
    "Transform",
    "LinearTransform",
    "LogTransform",
    "AsinhTransform",
    "LogicleTransform",
    "HyperlogTransform",
    "RatioTransform",
]

_LN10 = math.log(10.0)


def _num(name, value, tid, cls):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GatingError(f"transformation {tid!r} ({cls}): parameter {name}={value!r} is not a number") from None
    if not math.isfinite(v):
        raise GatingError(f"transformation {tid!r} ({cls}): parameter {name}={value!r} is not finite")
    return v


class Transform:
    """Base class: a one-dimensional scale transformation with Gating-ML parameters."""

    gml_name: str = ""
    param_names: tuple = ()

    def __init__(self, id=None):
        self.id = None if id is None else str(id)

    # subclasses set self.params (tuple of floats, in param_names order)
    @property
    def parameters(self) -> dict:
        """``{"T": ..., "M": ...}``: the Gating-ML parameters by name."""
        return dict(zip(self.param_names, self.params))

    def _key(self):
        return (type(self).__name__, self.params)

    def __eq__(self, other):
        return isinstance(other, Transform) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        args = ", ".join(f"{k.lower()}={v:g}" for k, v in self.parameters.items())
        tid = f", id={self.id!r}" if self.id is not None else ""
        return f"{type(self).__name__}({args}{tid})"

    def _fail(self, msg):
        raise GatingError(f"transformation {self.id!r} ({self.gml_name}): {msg}")

    def apply(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y):  # pragma: no cover - abstract
        raise NotImplementedError

    __call__ = lambda self, x: self.apply(x)  # noqa: E731


class LinearTransform(Transform):
    """Gating-ML ``flin``: ``y = (x + A) / (T + A)``.

    Parameters
    ----------
    t : float
        Top of scale (data units), ``T > 0``.
    a : float
        Bottom of scale offset (data units), ``0 <= A <= T``.
    """

    gml_name = "flin"
    param_names = ("T", "A")

    def __init__(self, t, a=0.0, id=None):
        super().__init__(id)
        t = _num("T", t, id, self.gml_name)
        a = _num("A", a, id, self.gml_name)
        self.params = (t, a)
        if not t > 0:
            self._fail(f"T={t:g} must be > 0")
        if not (0 <= a <= t):
            self._fail(f"A={a:g} must be in [0, T={t:g}]")

    def apply(self, x):
        t, a = self.params
        xp = array_module(x)
        return (xp.asarray(x, dtype=xp.float64) + a) / (t + a)

    def inverse(self, y):
        t, a = self.params
        xp = array_module(y)
        return xp.asarray(y, dtype=xp.float64) * (t + a) - a


class LogTransform(Transform):
    """Gating-ML ``flog``: ``y = log10(x / T) / M + 1`` (NaN for ``x <= 0``).

    Parameters
    ----------
    t : float
        Top of scale (data units), ``T > 0``.
    m : float
        Number of decades shown, ``M > 0``.
    """

    gml_name = "flog"
    param_names = ("T", "M")

    def __init__(self, t, m, id=None):
        super().__init__(id)
        t = _num("T", t, id, self.gml_name)
        m = _num("M", m, id, self.gml_name)
        self.params = (t, m)
        if not t > 0:
            self._fail(f"T={t:g} must be > 0")
        if not m > 0:
            self._fail(f"M={m:g} must be > 0")

    def apply(self, x):
        t, m = self.params
        xp = array_module(x)
        x = xp.asarray(x, dtype=xp.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = xp.log10(x / t) / m + 1.0
        return xp.where(x > 0, y, xp.nan)

    def inverse(self, y):
        t, m = self.params
        xp = array_module(y)
        return t * xp.power(10.0, (xp.asarray(y, dtype=xp.float64) - 1.0) * m)


class AsinhTransform(Transform):
    """Gating-ML ``fasinh``: ``y = (asinh(x sinh(M ln10) / T) + A ln10) / ((M + A) ln10)``.

    Parameters
    ----------
    t : float
        Top of scale (data units), ``T > 0``.
    m : float
        Decades of the log-like part, ``M > 0``.
    a : float
        Additional decades of negative data, ``0 <= A <= M``.
    """

    gml_name = "fasinh"
    param_names = ("T", "M", "A")

    def __init__(self, t, m, a=0.0, id=None):
        super().__init__(id)
        t = _num("T", t, id, self.gml_name)
        m = _num("M", m, id, self.gml_name)
        a = _num("A", a, id, self.gml_name)
        self.params = (t, m, a)
        if not t > 0:
            self._fail(f"T={t:g} must be > 0")
        if not m > 0:
            self._fail(f"M={m:g} must be > 0")
        if not (0 <= a <= m):
            self._fail(f"A={a:g} must be in [0, M={m:g}]")

    def apply(self, x):
        t, m, a = self.params
        xp = array_module(x)
        x = xp.asarray(x, dtype=xp.float64)
        return (xp.arcsinh(x * math.sinh(m * _LN10) / t) + a * _LN10) / ((m + a) * _LN10)

    def inverse(self, y):
        t, m, a = self.params
        xp = array_module(y)
        y = xp.asarray(y, dtype=xp.float64)
        return t * xp.sinh(y * (m + a) * _LN10 - a * _LN10) / math.sinh(m * _LN10)


class _Biex(Transform):
    param_names = ("T", "W", "M", "A")

    def __init__(self, t, w, m, a=0.0, id=None):
        super().__init__(id)
        t = _num("T", t, id, self.gml_name)
        w = _num("W", w, id, self.gml_name)
        m = _num("M", m, id, self.gml_name)
        a = _num("A", a, id, self.gml_name)
        self.params = (t, w, m, a)
        if not t > 0:
            self._fail(f"T={t:g} must be > 0")
        if not m > 0:
            self._fail(f"M={m:g} must be > 0")
        wmin = 0.0 if self.gml_name == "logicle" else 0.0
        if not (w >= wmin and w <= m / 2) or (self.gml_name == "hyperlog" and w == 0):
            rng = "[0, M/2]" if self.gml_name == "logicle" else "(0, M/2]"
            self._fail(f"W={w:g} must be in {rng} with M={m:g}")
        if not (-w <= a <= m - 2 * w):
            self._fail(f"A={a:g} must be in [-W, M - 2W] = [{-w:g}, {m - 2 * w:g}]")

    @property
    def coefficients(self):
        """The internal coefficients ``(kind, a, b, c, d, f, x1)`` of the scale."""
        from evflow.kernels import transforms as kt

        maker = kt.logicle_params if self.gml_name == "logicle" else kt.hyperlog_params
        return maker(*self.params)

    def table(self):
        """The lookup table ``(knots, y0, h)``: ``y = y0 + h (k + (x - x_k) / (x_{k+1} - x_k))``.

        Knots are strictly increasing data values on a uniform display grid of
        step ``h`` (2**-13), symmetric about zero, covering ``|x| <= 1e12``.
        """
        from evflow.kernels import transforms as kt

        return kt.build_table(self.coefficients)

    @renamed_impl("engine")
    def apply(self, x, impl: str = "auto"):
        """Display values of data ``x`` (fast table path; within 3e-8 of :meth:`apply_exact`).

        ``impl``: 'auto', 'numpy', 'numba' or 'cupy' (the table lookup's
        implementation, see :func:`evflow.kernels.transforms.forward_fast`).
        """
        from evflow.kernels import transforms as kt

        return kt.forward_fast(x, self.coefficients, impl=impl)

    def apply_exact(self, x):
        """Root-finding reference of :meth:`apply` (NumPy only, slow)."""
        from evflow.kernels import transforms as kt

        from ..backend import to_numpy

        return kt.forward_exact(to_numpy(x), self.coefficients)

    def inverse(self, y):
        from evflow.kernels import transforms as kt

        return kt.inverse(y, self.coefficients, array_module(y))


class LogicleTransform(_Biex):
    """Gating-ML ``logicle`` (Parks, Roederer & Moore 2006).

    Parameters
    ----------
    t : float
        Top of scale (data units), ``T > 0``; maps to 1.
    w : float
        Width of the linear region (decades), ``0 <= W <= M/2``.
    m : float
        Decades of the full display, ``M > 0``.
    a : float
        Additional negative decades, ``-W <= A <= M - 2W``.
    """

    gml_name = "logicle"


class HyperlogTransform(_Biex):
    """Gating-ML ``hyperlog`` (Bagwell 2005), parameters as :class:`LogicleTransform` with ``W > 0``."""

    gml_name = "hyperlog"


class RatioTransform(Transform):
    """Gating-ML ``fratio``: a new dimension ``y = A (x1 - B) / (x2 - C)`` from two channels.

    Parameters
    ----------
    channels : (str, str)
        Numerator and denominator channels (``$PnN``).
    a, b, c : float
        Scale and the two offsets (data units).
    """

    gml_name = "fratio"
    param_names = ("A", "B", "C")

    def __init__(self, channels, a=1.0, b=0.0, c=0.0, id=None):
        super().__init__(id)
        channels = tuple(str(c_) for c_ in channels)
        if len(channels) != 2:
            raise GatingError(f"transformation {id!r} (fratio): needs exactly 2 channels, got {list(channels)}")
        self.channels = channels
        self.params = (_num("A", a, id, "fratio"), _num("B", b, id, "fratio"), _num("C", c, id, "fratio"))

    def _key(self):
        return (type(self).__name__, self.channels, self.params)

    def __repr__(self):
        return f"RatioTransform({list(self.channels)}, a={self.params[0]:g}, b={self.params[1]:g}, c={self.params[2]:g}, id={self.id!r})"

    def apply(self, x):
        """``x``: array (n, 2) of the two channels → ratio values (n,)."""
        a, b, c = self.params
        xp = array_module(x)
        x = xp.asarray(x, dtype=xp.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return a * (x[:, 0] - b) / (x[:, 1] - c)

    def inverse(self, y):
        raise GatingError(f"transformation {self.id!r} (fratio): a ratio has no inverse")
