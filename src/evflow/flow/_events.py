"""Events of the samples counted by :mod:`evflow.flow.phenotypes`, and the per-chunk tasks.

Samples given as FCSSample objects, paths or ``(events, channels)`` arrays
become FCSSample objects with dask events (row chunks); each chunk is one
task of the fused kernel (:mod:`evflow.kernels.phenotype`), and the partial
results are summed (or concatenated) in a binary tree.
"""

from __future__ import annotations

import operator
import os
import sys
from collections.abc import Mapping

import numpy as np

from ..errors import GatingError
from ..io.fcs.sample import _wrap_in_memory  # noqa: F401  (the in-memory wrapper lives with as_sample)
from ..kernels._registry import renamed_impl

# ============================================================================ samples


def _is_array_pair(s):
    return (
        isinstance(s, tuple)
        and len(s) == 2
        and hasattr(s[0], "shape")
        and isinstance(s[1], (list, tuple))
        and all(isinstance(c, str) for c in s[1])
    )


def _array_sample(events, channels, name):
    """An in-memory FCSSample of linear-scale events (NumPy, CuPy or dask array)."""
    return _as_sample((events, list(channels)), name)


def _as_sample(s, name_hint=None):
    from ..io.fcs import as_sample

    return as_sample(s, what=f"sample {name_hint!r}", name=name_hint or "events", error=GatingError)


def _samples(sample_or_samples):
    """``[(name, FCSSample)]`` from one sample/path, a list of them, or a dict name -> sample."""
    if _is_array_pair(sample_or_samples):
        sample_or_samples = [sample_or_samples]
    if isinstance(sample_or_samples, Mapping):
        items = [(str(k), _as_sample(v, k)) for k, v in sample_or_samples.items()]
    elif isinstance(sample_or_samples, (list, tuple)):
        items = []
        for i, s in enumerate(sample_or_samples):
            smp = _as_sample(s, f"events{i}" if len(sample_or_samples) > 1 else "events")
            items.append((smp.name, smp))
    else:
        smp = _as_sample(sample_or_samples)
        items = [(smp.name, smp)]
    if not items:
        raise GatingError("no samples given")
    names = [n for n, _ in items]
    seen = {}
    out = []
    for n, s in items:  # make names unique (two files with the same stem)
        if names.count(n) > 1:
            seen[n] = seen.get(n, 0) + 1
            n = f"{n}#{seen[n]}"
        out.append((n, s))
    return out


def _scaled_events(sample):
    """Linear-scale events of a sample (dask, full rows per chunk)."""
    if hasattr(sample, "linear_events"):
        events = sample.linear_events()
    else:  # a sample-like object without the FCSSample API: assume linear values
        events = sample.events
    if len(events.chunks[1]) != 1:
        events = events.rechunk({1: -1})
    return events


def _sample_spillover(sample, name):
    try:
        return sample.spillover
    except Exception as exc:
        return exc

# ============================================================================ per-chunk tasks


def _chunk_threads(events):
    """Numba threads per chunk: all (launches are serialised; each uses every core)."""
    return None


def _worker_threads():
    """Numba threads for a chunk run by a ``distributed`` worker: the worker's per-task thread budget
    (``OMP_NUM_THREADS``, which the nanny sets to 1 by default: the cluster's parallelism is its tasks),
    else None (all cores; the threaded scheduler serialises launches)."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        get_worker()
    except ValueError:
        return None
    v = os.environ.get("OMP_NUM_THREADS", "")
    return int(v) if v.isdigit() and int(v) > 0 else None


def _block_partial(block, plan, impl, mask_info, n_threads=None, backend="numpy"):
    """One chunk's partial: the chunk read on the host crosses to ``backend``'s device once
    (:func:`evflow.backend.to_device`), is gated and counted there, and its partial stays there
    (the partials of a sample add up on the device; :func:`_sample_total` brings the sum back once)."""
    from ..backend import to_device
    from ..kernels.phenotype import fused

    if n_threads is None:
        n_threads = _worker_threads()
    block = to_device(block, backend, what="events chunk")
    mask = None
    if mask_info is not None:
        strategy, channels, gate_id, fcs = mask_info
        mask = strategy.mask(block, channels, gate_id, fcs)
    return fused(block, plan, mask=mask, impl=impl, n_threads=n_threads, on_device=True)


def _to_host_partial(partial):
    return partial.to_host(what="sample partial")


def _sample_total(parts):
    """The delayed sum of a sample's chunk partials, on the host: one crossing back per sample."""
    import dask

    return dask.delayed(_to_host_partial)(_tree(parts, operator.add))


def _block_control_values(block, plan, mask_info, slots):
    from ..backend import to_host
    from ..kernels.phenotype import slot_values

    block = to_host(block, what="control chunk")  # controls are gated on the host (values for the rules)
    mask = None
    if mask_info is not None:
        strategy, channels, gate_id, fcs = mask_info
        mask = strategy.mask(block, channels, gate_id, fcs)
    vals, keep, _ = slot_values(block, plan, mask)
    return vals[list(slots)][:, keep]


def _tree(items, fn):
    import dask

    items = list(items)
    if not items:
        raise GatingError("a sample without chunks")
    while len(items) > 1:
        items = [dask.delayed(fn)(items[i], items[i + 1]) if i + 1 < len(items) else items[i] for i in range(0, len(items), 2)]
    return items[0]


def _concat(a, b):
    return np.concatenate([a, b], axis=1)


def _kernel_name(impl, backend):
    """The ``impl`` handed to the fused kernel per chunk: 'numpy', 'numba'/'cupy' (by backend) or 'auto'."""
    from ..kernels._registry import check_impl

    name = check_impl(impl)
    if name == "numba":
        return "numba" if backend == "numpy" else "cupy"
    if name == "cupy":
        return "auto"  # CuPy chunks (backend='cupy') run the CUDA kernel
    return name


#: old names and values of ``impl=`` (accepted for one release)
_renamed_kernel = renamed_impl("kernel", values={"reference": "numpy", "fast": "numba"})


def _prepare_events(sample, sname, backend):
    """The sample's linear-scale events as they are read (host chunks; each chunk task moves its chunk to
    ``backend``'s device itself, see :func:`_block_partial`)."""
    if sample.n_events == 0 or sample.events.shape[0] == 0:
        raise GatingError(f"sample {sname!r} has no events; nothing to count")
    return _scaled_events(sample)
