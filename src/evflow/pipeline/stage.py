"""One pipeline stage: items by key, each fingerprinted, cached or computed as one dask task.

A :class:`Stage` holds the items of one kind (calibrations, controls, flow
samples, image fields).  :meth:`Stage.add` fingerprints an item's inputs and
settings; an item stored with that fingerprint is reused (resume), any
other becomes a delayed task running the stage's *body*.  :meth:`Runner.run`
computes the pending tasks of one or more stages in one dask computation
(one progress bar) on the runner's scheduler.  Every task times its body,
writes its item atomically to the result store and turns an exception into
a failure of that item only.

A body is a module-level function ``body(*args, **params) -> dict`` (so the
task pickles by reference on a cluster); the dict is the stored item.
"""

from __future__ import annotations

import contextlib
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import EvflowError
from .config import Experiment
from .scheduler import compute_tasks, scheduler_context
from .store import ResultStore, fingerprint

__all__ = ["Stage", "Runner", "RunContext", "run_item"]


def run_item(body, store_root, kind, name, fp, *args, **params) -> dict:
    """Run one item's body with the synchronous scheduler inside; time it, store it, or return its error.

    Returns the item (with ``seconds`` of the body and ``write_s`` of storing it) or ``{"error": message}`` (a traceback for non-evflow errors).
    """
    import dask

    t0 = time.perf_counter()
    try:
        with dask.config.set(scheduler="sync"):
            item = body(*args, **params)
        item["seconds"] = time.perf_counter() - t0
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, EvflowError):
            detail += "\n" + traceback.format_exc(limit=4)
        return {"error": detail}
    t0 = time.perf_counter()
    try:
        ResultStore.at(store_root).save(kind, name, fp, item)
    except OSError as exc:  # disk full, read-only, ...: this item fails, the others go on
        where = exc.filename or ResultStore.at(store_root).path(kind, name)
        return {"error": f"OutputError: cannot store the {kind} item {name!r} at {where} "
                         f"({exc.strerror or type(exc).__name__})"}
    item["write_s"] = time.perf_counter() - t0  # (not stored: the item is written by then)
    return item


class Stage:
    """The items of one kind: add them by key, run the stage on a :class:`Runner`, read the results.

    Parameters
    ----------
    runner : Runner
        Owns the scheduler, the store and the version that every fingerprint starts with.
    kind : str
        Store kind of the items ('calibration', 'control', 'flow', ...).
    body : callable
        Module-level function computing one item: ``body(*args, **params) -> dict``.
    name : callable, optional
        Store name of an item from its key (default ``str(key)``).
    what : callable, optional
        How a failure of an item is named, from its key (default ``f"{kind} {key}"``).
    shown : callable, optional
        How a failing item is named in the printed error (default: ``what``).
    params : dict
        Keyword arguments passed to the body of every item (may be updated before the stage runs).

    After :meth:`Runner.run`: ``items`` (key -> item, stored items first, then computed ones, each in
    the order added; failed items hold ``"error"``), ``failures`` (``what(key)`` -> message),
    ``good`` (items without errors), ``seconds`` (of its computation), ``computed`` (keys computed)
    and ``task_seconds`` (sum of the bodies' times of the computed items).
    """

    def __init__(self, runner: Runner, kind: str, body: Callable, *, name: Callable | None = None,
                 what: Callable | None = None, shown: Callable | None = None, **params):
        self.runner = runner
        self.kind = kind
        self.body = body
        self._name = name or str
        self._what = what or (lambda key: f"{kind} {key}")
        self._shown = shown or self._what
        self.params = dict(params)
        self.items: dict = {}
        self.fingerprints: dict = {}
        self.seconds = 0.0
        self._pending: list = []  # (key, store name, fingerprint, args)

    def add(self, key, inputs, *args) -> str:
        """Add the item ``key`` whose fingerprint is of ``[version, *inputs]`` (the runner's version first);
        ``args`` go to the body.  Returns the fingerprint."""
        name = self._name(key)
        fp = fingerprint(self.runner.version, *inputs)
        self.fingerprints[key] = fp
        hit = self.runner.cached(self.kind, name, fp)
        if hit is not None:
            self.items[key] = hit
        else:
            self._pending.append((key, name, fp, args))
        return fp

    @property
    def pending(self) -> list:
        """Keys of the items that are to be computed."""
        return [p[0] for p in self._pending]

    def tasks(self) -> list:
        """One delayed task per pending item."""
        import dask

        root = str(self.runner.store.root)
        return [dask.delayed(run_item, pure=False)(self.body, root, self.kind, name, fp, *args,
                                                   dask_key_name=f"{self.body.__name__}-{uuid.uuid4().hex}",
                                                   **self.params)
                for key, name, fp, args in self._pending]

    def collect(self, results) -> None:
        for key, res in zip(self.pending, results):
            self.items[key] = res

    @property
    def good(self) -> dict:
        return {k: v for k, v in self.items.items() if "error" not in v}

    @property
    def failures(self) -> dict:
        return {self._what(k): v["error"] for k, v in self.items.items() if "error" in v}

    @property
    def task_seconds(self) -> float:
        return sum(float(self.items[k].get("seconds", 0.0)) for k in self.pending)

    def step_seconds(self) -> dict:
        """Seconds per step summed over the computed items: their ``stage_s`` (what a body records) and
        ``write`` (storing the items)."""
        out: dict = {}
        for k in self.pending:
            it = self.items[k]
            for step, v in (it.get("stage_s") or {}).items():
                out[step] = out.get(step, 0.0) + float(v)
            if "write_s" in it:
                out["write"] = out.get("write", 0.0) + float(it["write_s"])
        return out

    def report_failures(self, failures: dict, err, *, first_line: bool = True) -> None:
        """Add this stage's failures to ``failures`` and print each (its first line by default)."""
        for k, v in self.items.items():
            if "error" in v:
                failures[self._what(k)] = v["error"]
                err(f"error: {self._shown(k)}: {v['error'].splitlines()[0] if first_line else v['error']}")


class Runner:
    """Runs stages on one scheduler, with one result store and progress bars.

    Use :meth:`open` as a context manager; it owns the scheduler (and a cluster it starts).
    """

    def __init__(self, store: ResultStore, *, version, sched="threads", client=None, resume: bool = True,
                 progress: bool = True, verbose: bool = False, log=print):
        self.store = store
        self.verbose = verbose
        self.version = list(version)
        self.sched = sched
        self.client = client
        self.resume = resume
        self.progress = progress
        self.log = log

    @classmethod
    @contextlib.contextmanager
    def open(cls, store: ResultStore, *, scheduler=None, n_workers=None, log=print, **kw):
        with scheduler_context(scheduler, n_workers=n_workers, log=log) as (sched, client):
            yield cls(store, sched=sched, client=client, log=log, **kw)

    def cached(self, kind: str, name: str, fp: str):
        """The stored item with this fingerprint, or None (always None without resume)."""
        return self.store.load(kind, name, fp) if self.resume else None

    def stage(self, kind: str, body: Callable, **kw) -> Stage:
        return Stage(self, kind, body, **kw)

    def run(self, label: str, *stages: Stage) -> float:
        """Compute the pending items of ``stages`` in one computation; returns (and sets on each) the seconds.

        Logs one line when the stage ends (items computed, reused from the store, failed, seconds) and,
        when ``verbose``, one line per item; progress bars (``progress``) are for terminals only.
        """
        tasks = [stage.tasks() for stage in stages]
        t0 = time.perf_counter()
        results = compute_tasks([t for ts in tasks for t in ts], label, self.sched, self.client, self.progress,
                                self.log)
        seconds = time.perf_counter() - t0
        i = 0
        for stage, ts in zip(stages, tasks):
            stage.collect(results[i:i + len(ts)])
            stage.seconds = seconds
            i += len(ts)
        self._log_stage(label, stages, seconds)
        return seconds

    def _log_stage(self, label: str, stages, seconds: float) -> None:
        n_items = sum(len(st.items) for st in stages)
        if not n_items:
            return
        computed = sum(len(st.pending) for st in stages)
        failed = sum(1 for st in stages for v in st.items.values() if "error" in v)
        self.log(f"[{label}] {n_items} item(s): {computed} computed, {n_items - computed} reused, {failed} failed "
                 f"in {seconds:.1f} s")
        if self.verbose:
            for st in stages:
                done = set(st.pending)
                for key, item in st.items.items():
                    state = ("failed: " + item["error"].splitlines()[0] if "error" in item
                             else f"{float(item.get('seconds', 0.0)):.2f} s" if key in done else "reused")
                    self.log(f"  {st._what(key)}: {state}")


@dataclass
class RunContext:
    """What a run computed, for the result dataset (:func:`~evflow.pipeline.results.assemble`) and the report."""

    experiment: Experiment
    backend: str
    markers: dict = field(default_factory=dict)
    flow_items: dict = field(default_factory=dict)  # sample name -> item
    image_items: dict = field(default_factory=dict)  # (sample name, fov) -> item
    calibration: dict = field(default_factory=dict)  # 'fluorescence' / 'size' / 'registration' -> item
    size_cal: object = None  # ScatterCalibration or None
    fluor: dict | None = None  # the fluorescence calibration item
    gate_desc: list = field(default_factory=list)
    size_limits: tuple | None = None
    strategy: object = None  # the flow gating strategy the run used (GatingStrategy or None)
    parent: str | None = None  # its parent gate id
    failures: dict = field(default_factory=dict)  # what failed -> message
    density: tuple | None = None
    threshold_desc: str = ""
    control_items: dict = field(default_factory=dict)
    image_thresholds: dict | None = None
    image_threshold_desc: str = ""
    copies: dict = field(default_factory=dict)  # marker -> unit brightness etc. (pipeline.copies)
