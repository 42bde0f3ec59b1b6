"""One registry of kernel implementations, chosen by ``impl=`` ('auto', 'numpy', 'numba', 'cupy').

Each kernel family has a :class:`Dispatcher`; its implementations are
registered by name as ``"module:attribute"`` strings and looked up at each
call, so the registry imports nothing (``import evflow.kernels`` never imports
Numba's kernels or CuPy) and the module's public name stays the one
implementation (wrapping ``evflow.kernels.phenotype.fused_numba`` wraps what
the dispatcher calls).  The model is dask-image's ``dispatch/``.

``auto`` picks 'cupy' for CuPy arrays (or dask arrays of CuPy chunks),
'numba' when Numba imports, else 'numpy'.  ``array library`` and
implementation are separate choices: ``backend=`` (see :mod:`evflow.backend`)
says where arrays live, ``impl=`` which code runs on them.

Old keyword names of the selector (``engine=``, ``kernel=``, ``fit_backend=``,
the kernel meaning of ``backend=``) are accepted for one release through
:func:`renamed_impl`, with a DeprecationWarning.
"""

from __future__ import annotations

import functools
import importlib
import warnings

from evflow.errors import ImplementationError

__all__ = [
    "IMPLS",
    "Dispatcher",
    "numba_available",
    "check_impl",
    "renamed_impl",
    "phenotype",
    "gaussfit",
    "biex_forward",
    "dog",
    "local_maxima",
    "windows",
    "steps",
    "block_noise",
    "box_extreme",
    "log_filter",
    "FAMILIES",
]

IMPLS = ("auto", "numpy", "numba", "cupy")


@functools.lru_cache(maxsize=1)
def numba_available() -> bool:
    """True when Numba imports."""
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover
        return False
    return True


def _is_cupy(a) -> bool:
    from evflow.backend import array_backend

    return array_backend(a) == "cupy"


def check_impl(impl, keyword: str = "impl", family: str | None = None) -> str:
    """``impl`` lower-cased, or :class:`~evflow.errors.ImplementationError` naming the choices."""
    name = "auto" if impl is None else str(impl).strip().lower()
    if name not in IMPLS:
        where = f" of {family}" if family else ""
        raise ImplementationError(
            f"{keyword}={impl!r} is not a kernel implementation{where}; expected one of {', '.join(IMPLS)}"
        )
    return name


class Dispatcher:
    """The implementations of one kernel family, registered by name.

    Parameters
    ----------
    family : str
        Name used in error messages.
    """

    def __init__(self, family: str):
        self.family = family
        self._targets: dict[str, str] = {}

    def register_lazy(self, impl: str, target: str) -> None:
        """Register ``"package.module:function"`` as implementation ``impl`` (imported on first use)."""
        if impl not in IMPLS or impl == "auto":
            raise ValueError(f"cannot register {impl!r}; implementations are {', '.join(IMPLS[1:])}")
        self._targets[impl] = target

    @property
    def impls(self) -> tuple[str, ...]:
        """Registered implementation names, in :data:`IMPLS` order."""
        return tuple(n for n in IMPLS if n in self._targets)

    def resolve(self, impl="auto", *arrays, keyword: str = "impl") -> str:
        """The implementation ``impl`` stands for, given the input ``arrays`` ('auto' looks at them).

        Raises
        ------
        ImplementationError
            ``impl`` is not one of :data:`IMPLS`, or this family has no such implementation.
        """
        name = check_impl(impl, keyword, self.family)
        if name == "auto":
            if any(_is_cupy(a) for a in arrays) and "cupy" in self._targets:
                return "cupy"
            return "numba" if numba_available() and "numba" in self._targets else "numpy"
        if name not in self._targets:
            raise ImplementationError(
                f"{keyword}={impl!r}: {self.family} has no {name!r} implementation; "
                f"expected one of auto, {', '.join(self.impls)}"
            )
        return name

    def get(self, impl: str):
        """The function registered as ``impl`` (a concrete name; see :meth:`resolve`)."""
        mod, _, attr = self._targets[impl].partition(":")
        return getattr(importlib.import_module(mod), attr)

    def __call__(self, impl, *args, **kwargs):
        """Call the implementation ``impl`` resolves to for ``args[0]``."""
        name = self.resolve(impl, *args[:1])
        return self.get(name)(*args, **kwargs)

    def __repr__(self):
        return f"Dispatcher({self.family!r}, impls={self.impls})"


def renamed_impl(*old_names: str, values: dict | None = None):
    """Accept the old keyword names of ``impl=`` for one release (DeprecationWarning).

    ``values`` maps old values to new ones (e.g. ``{'reference': 'numpy'}``).
    The decorated function's signature (``inspect.signature``) shows ``impl``
    only; the old names are taken from ``**kwargs`` by the wrapper.
    """
    values = dict(values or {})

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old in old_names:
                if old not in kwargs:
                    continue
                value = kwargs.pop(old)
                if "impl" in kwargs:
                    raise TypeError(f"{fn.__qualname__}() got both impl= and its old name {old}=")
                warnings.warn(
                    f"{fn.__qualname__}({old}=...) is deprecated and will be removed; use impl= "
                    f"({', '.join(IMPLS)})",
                    DeprecationWarning,
                    stacklevel=2,
                )
                key = str(value).strip().lower() if value is not None else None
                value = values.get(key, value)
                check_impl(value, f"{old}", fn.__qualname__)
                kwargs["impl"] = value
            return fn(*args, **kwargs)

        return wrapper

    return deco


# ---------------------------------------------------------------------------
# the kernel families
# ---------------------------------------------------------------------------

_K = "evflow.kernels"

#: fused gating + phenotype counting + density of one chunk of events (phenotype.cu)
phenotype = Dispatcher("the phenotype kernel")
phenotype.register_lazy("numpy", f"{_K}.phenotype:fused_numpy")
phenotype.register_lazy("numba", f"{_K}.phenotype:fused_numba")
phenotype.register_lazy("cupy", f"{_K}.phenotype:fused_cupy")

#: batched integrated-Gaussian spot fits (gaussfit.cu)
gaussfit = Dispatcher("the Gaussian fit")
gaussfit.register_lazy("numpy", f"{_K}.gaussfit:fit_numpy")
gaussfit.register_lazy("numba", f"{_K}.gaussfit:fit_numba")
gaussfit.register_lazy("cupy", f"{_K}.gaussfit:fit_cupy")

#: logicle / hyperlog forward transform by table lookup
biex_forward = Dispatcher("the logicle/hyperlog transform")
biex_forward.register_lazy("numpy", f"{_K}.transforms:table_forward_numpy")
biex_forward.register_lazy("numba", f"{_K}.transforms:table_forward_numba")
biex_forward.register_lazy("cupy", f"{_K}.transforms:table_forward")

#: image filters of spot detection: difference of Gaussians, local maxima, window extraction
dog = Dispatcher("the difference-of-Gaussians filter")
dog.register_lazy("numpy", f"{_K}.filters:dog_ndimage")
dog.register_lazy("numba", f"{_K}.filters:dog_numba")
dog.register_lazy("cupy", f"{_K}.filters:dog_ndimage")

local_maxima = Dispatcher("the local-maxima filter")
local_maxima.register_lazy("numpy", f"{_K}.filters:peaks_ndimage")
local_maxima.register_lazy("numba", f"{_K}.filters:peaks_numba")
local_maxima.register_lazy("cupy", f"{_K}.filters:peaks_ndimage")

windows = Dispatcher("the fit-window extraction")
windows.register_lazy("numpy", f"{_K}.filters:windows_xp")
windows.register_lazy("numba", f"{_K}.filters:windows_numba")
windows.register_lazy("cupy", f"{_K}.filters:windows_xp")

#: change points of photobleaching traces by binary segmentation (steps.cu)
steps = Dispatcher("the step counting")
steps.register_lazy("numpy", f"{_K}.steps:binseg_numpy")
steps.register_lazy("numba", f"{_K}.steps:binseg_numba")
steps.register_lazy("cupy", f"{_K}.steps:binseg_cupy")

#: robust noise (iterated MAD away from candidates) of many blocks of samples: the local noise model; the
#: samples are on the host (they crossed once, as "noise samples"), so 'cupy' runs the compiled host version
block_noise = Dispatcher("the block noise estimate")
block_noise.register_lazy("numpy", f"{_K}.noise:block_noise_numpy")
block_noise.register_lazy("numba", f"{_K}.noise:block_noise_numba")
block_noise.register_lazy("cupy", f"{_K}.noise:block_noise_numba")

#: square maximum / minimum filters (van Herk / Gil-Werman on the host; what get_ndi('numpy') serves)
box_extreme = Dispatcher("the box maximum/minimum filter")
box_extreme.register_lazy("numpy", f"{_K}.minmax:box_extreme_numpy")
box_extreme.register_lazy("numba", f"{_K}.minmax:box_extreme_numba")
box_extreme.register_lazy("cupy", f"{_K}.minmax:box_extreme_cupy")

#: Laplacian of the Gaussian-smoothed field (the focus measure of per-field QC)
log_filter = Dispatcher("the Laplacian-of-Gaussian filter")
log_filter.register_lazy("numpy", f"{_K}.focus:log_ndimage")
log_filter.register_lazy("numba", f"{_K}.focus:log_numba")
log_filter.register_lazy("cupy", f"{_K}.focus:log_ndimage")

FAMILIES = {
    "phenotype": phenotype,
    "gaussfit": gaussfit,
    "biex_forward": biex_forward,
    "dog": dog,
    "local_maxima": local_maxima,
    "windows": windows,
    "steps": steps,
    "block_noise": block_noise,
    "box_extreme": box_extreme,
    "log_filter": log_filter,
}
