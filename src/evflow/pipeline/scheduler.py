"""Where the pipeline's tasks run: the dask scheduler, its workers and one computation per stage.

The same graph runs on the threaded scheduler, a local process cluster, a
dask-cuda cluster or an existing ``distributed`` scheduler; the chunking of
every input is the same on each, so the results are too.
"""

from __future__ import annotations

import contextlib
import sys

from ..errors import ConfigError

__all__ = ["scheduler_context", "local_cuda_cluster", "compute_tasks", "inner_compute", "split_samples",
           "SPLIT_SAMPLES_PER_THREAD", "WORKER_MMAP_THRESHOLD"]

#: on a distributed cluster, spread the row chunks of each sample over the workers when there are fewer
#: than this many samples per worker thread to compute (0: never)
SPLIT_SAMPLES_PER_THREAD = 2
#: glibc mmap threshold (bytes) of the worker processes of ``scheduler='processes'``
WORKER_MMAP_THRESHOLD = 1 << 26
#: local clusters (scheduler, workers, dashboard) listen on this address only, never on every interface
LOCAL_HOST = "127.0.0.1"


@contextlib.contextmanager
def scheduler_context(spec=None, *, n_workers=None, log=print):
    """Yield ``(dask_scheduler, client)`` for a scheduler spec.

    ``spec``: None/'threads' (default threaded scheduler), 'sync',
    'processes' (a ``distributed.LocalCluster`` of worker processes),
    'local-cuda' (a ``dask_cuda.LocalCUDACluster``, one worker per GPU), an
    address like 'tcp://host:8786' (an existing scheduler), or a
    ``distributed.Client``.
    """
    if spec is None or spec in ("threads", "threaded"):
        yield "threads", None
        return
    if spec in ("sync", "synchronous"):
        yield "sync", None
        return
    if type(spec).__name__ == "Client" and hasattr(spec, "compute"):
        yield None, spec
        return
    if not isinstance(spec, str):
        raise ConfigError(f"scheduler {spec!r}: expected threads, processes, local-cuda, tcp://host:port or a Client")
    try:
        import distributed
    except ImportError:
        raise ConfigError(
            f"scheduler {spec!r} needs the 'distributed' package (pip install 'evflow[distributed]')"
        ) from None
    cluster = None
    if spec == "processes":
        import dask

        # dask's nanny sets MALLOC_TRIM_THRESHOLD_=64 KiB, which also pins glibc's mmap threshold at 128 KiB:
        # every large temporary (event chunks, per-chunk histograms) then costs fresh pages (about 2x slower
        # tasks); a 64 MiB mmap threshold keeps them in the heap (memory is still trimmed at the heap top)
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": WORKER_MMAP_THRESHOLD}):
            cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                               host=LOCAL_HOST, dashboard_address=f"{LOCAL_HOST}:0")
        client = distributed.Client(cluster)
    elif spec == "local-cuda":
        cluster = local_cuda_cluster()
        client = distributed.Client(cluster)
    elif "://" in spec:
        try:
            client = distributed.Client(spec, timeout="30s")
        except Exception as exc:
            raise ConfigError(f"scheduler {spec!r}: cannot connect ({type(exc).__name__}: {exc})") from None
    else:
        raise ConfigError(f"scheduler {spec!r}: expected threads, processes, local-cuda or tcp://host:port")
    try:
        link = getattr(client, "dashboard_link", None)
        if link:
            log(f"dask dashboard: {link}")
        yield None, client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def local_cuda_cluster():
    """A ``dask_cuda.LocalCUDACluster`` on this machine: one worker per visible GPU (``CUDA_VISIBLE_DEVICES``),
    each worker's tasks on its own GPU, listening on 127.0.0.1 only.

    Raises
    ------
    ConfigError
        Naming the missing piece: the ``evflow[dask-cuda]`` extra (dask-cuda), or a working CUDA GPU with CuPy.
    """
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise ConfigError(
            f"scheduler 'local-cuda' needs dask-cuda, which cannot be imported ({type(exc).__name__}: {exc}); "
            "install the extra: pip install 'evflow[dask-cuda]' (with evflow[cuda13] or evflow[gpu] for CuPy)"
        ) from None
    from ..backend import _probe_cupy

    why = _probe_cupy()
    if why is not None:
        raise ConfigError(f"scheduler 'local-cuda' needs a CUDA GPU with CuPy, but {why}; "
                          "use --scheduler threads or processes here")
    return LocalCUDACluster(host=LOCAL_HOST, dashboard_address=f"{LOCAL_HOST}:0")


def compute_tasks(tasks, label, sched, client, progress, log) -> list:
    """Compute delayed ``tasks`` in one go (a progress bar when ``progress``); their results in order."""
    if not tasks:
        return []
    log(f"[{label}] {len(tasks)} task(s)")
    if client is not None:
        futures = client.compute(tasks)
        if progress:
            from distributed import progress as dprogress

            dprogress(futures)
            print(file=sys.stderr)
        return client.gather(futures)
    import dask

    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=1.0, out=sys.stderr):
            return list(dask.compute(*tasks, scheduler=sched))
    return list(dask.compute(*tasks, scheduler=sched))


def split_samples(client, n_pending: int) -> bool:
    """Whether each sample's row chunks are spread over the cluster's workers (few samples on a cluster).

    Results do not depend on it: the chunking is the same on every scheduler.
    """
    return client is not None and n_pending < SPLIT_SAMPLES_PER_THREAD * max(1, sum(client.nthreads().values()))


def inner_compute(graph, split):
    """Compute a sample's chunk graph: on the cluster (``split``: its row chunks spread over all workers,
    the calling task seceding while it waits) or in the calling task (synchronously)."""
    import dask

    if split:
        try:
            from distributed import get_worker, worker_client

            get_worker()
        except (ImportError, ValueError):
            split = False
    if not split:
        return dask.compute(graph, scheduler="sync")[0]
    with worker_client() as client:
        return client.compute(graph, sync=True)
