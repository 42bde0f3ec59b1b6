"""Batch pipeline: one experiment file -> results.zarr, tidy tables, HTML report.

Stages (each one dask computation, with a progress bar):

1. calibration: MESF beads, size beads (scatter -> diameter), imaging
   registration beads;
2. controls: positivity thresholds from the control samples;
3. samples: one task per flow sample and per image field.

Every item is written atomically to the result store with a fingerprint of
its inputs and settings (:mod:`evflow.pipeline.store`); a rerun skips the
items whose fingerprint is unchanged.  A failing item is reported and does
not stop the others.  The same graph runs on the threaded scheduler, a local
process cluster, a dask-cuda cluster or an existing ``distributed``
scheduler.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import traceback

import numpy as np

from ..errors import ConfigError, EvflowError
from ..flow.thresholds import ThresholdRule, experiment_rule
from .config import Experiment, load_experiment
from .store import ResultStore, file_fingerprint, file_sha256, fingerprint

__all__ = ["run", "PIPELINE_VERSION"]

#: bump when a change in the pipeline changes stored items
PIPELINE_VERSION = "2"

DENSITY_BINS = 96
#: on a distributed cluster, spread the row chunks of each sample over the workers when there are fewer
#: than this many samples per worker thread to compute (0: never)
SPLIT_SAMPLES_PER_THREAD = 2
#: glibc mmap threshold (bytes) of the worker processes of ``scheduler='processes'``
WORKER_MMAP_THRESHOLD = 1 << 26
#: events per dask chunk of a flow sample (the same for every scheduler, so results are identical)
CHUNK_EVENTS = 1 << 19
DISPLAY_EVENTS = 100_000  # events shown in the density plots and size distributions of the report
SIZE_BINS = 48


# =========================================================================== scheduler


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
                                               dashboard_address=":0")
        client = distributed.Client(cluster)
    elif spec == "local-cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise ConfigError("scheduler 'local-cuda' needs dask-cuda (pip install dask-cuda) and a CUDA GPU") from None
        cluster = LocalCUDACluster(dashboard_address=":0")
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


def _compute(tasks, label, sched, client, progress, log):
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


# =========================================================================== task helpers


def _guard(fn):
    """Run a task body with the synchronous scheduler inside; turn errors into an item."""

    def wrapper(*args, **kw):
        import dask

        t0 = time.perf_counter()
        try:
            with dask.config.set(scheduler="sync"):
                item = fn(*args, **kw)
            item["seconds"] = time.perf_counter() - t0
            return item
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, EvflowError):
                detail += "\n" + traceback.format_exc(limit=4)
            return {"error": detail}

    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    return wrapper


def _save(store_root, kind, name, fp, item):
    if "error" not in item:
        ResultStore.at(store_root).save(kind, name, fp, item)
    return item


def _particle(cal_s):
    from ..flow.mie import CoatedSphere, Sphere

    bead = Sphere(float(cal_s.get("bead_index", 1.59)))
    ev = CoatedSphere(float(cal_s.get("ev_core_index", 1.38)), float(cal_s.get("ev_shell_index", 1.48)),
                      float(cal_s.get("ev_shell_nm", 5.0)))
    return bead, ev


# =========================================================================== calibration tasks


def _t_fluorescence(path, cal_s, store_root, fp):
    from ..flow.calibration import calibrate_mesf

    @_guard
    def body():
        cal = calibrate_mesf(str(path), cal_s["channel"], cal_s["values"],
                             clustering_channels=cal_s.get("clustering_channels"),
                             units=cal_s.get("units", "MESF"))
        s = cal.summary()
        return {"summary": s, "m": float(cal.params["m"]), "b": float(cal.params["b"]),
                "peaks": np.asarray(cal.peak_medians, float), "mesf_values": np.asarray(cal.mesf_values, float),
                "used": np.asarray([st == "used" for st in cal.peak_status]), "r2": float(cal.r2)}

    return _save(store_root, "calibration", "fluorescence", fp, body())


def _t_size(path, cal_s, store_root, fp):
    from ..flow.calibration import calibrate_scatter

    @_guard
    def body():
        bead, ev = _particle(cal_s)
        cal = calibrate_scatter(str(path), cal_s["channel"], cal_s["diameters_nm"], bead_model=bead, particle=ev,
                                wavelength_nm=float(cal_s.get("wavelength_nm", 488.0)),
                                medium_index=float(cal_s.get("medium_index", 1.333)))
        return {"gain": float(cal.gain), "r2": float(cal.r2), "bead_scatter": np.asarray(cal.bead_scatter, float),
                "bead_diameters_nm": np.asarray(cal.bead_diameters_nm, float),
                "residuals": np.asarray(cal.residuals, float),
                "unique_range_nm": list(cal.unique_range_nm)}

    return _save(store_root, "calibration", "size", fp, body())


def _rebuild_scatter(item, cal_s):
    from ..flow.calibration import fit_scatter_gain

    bead, ev = _particle(cal_s)
    return fit_scatter_gain(item["bead_scatter"], item["bead_diameters_nm"], bead_model=bead, particle=ev,
                            channel=cal_s["channel"], wavelength_nm=float(cal_s.get("wavelength_nm", 488.0)),
                            medium_index=float(cal_s.get("medium_index", 1.333)))


def _t_registration(path, img_s, store_root, fp):
    from .imaging import registration_from_beads

    @_guard
    def body():
        return registration_from_beads(path, img_s)

    return _save(store_root, "calibration", "registration", fp, body())


# =========================================================================== flow tasks


def _t_control(name, path, strategy, parent, markers, trule, backend, store_root, fp):
    from ..flow.phenotypes import count_phenotypes

    @_guard
    def body():
        rule = trule.for_control(name)
        ds = count_phenotypes({name: str(path)}, parent=parent, strategy=strategy,
                              markers={m: (ch, rule) for ch, m in markers.items()},
                              controls={name: str(path)}, backend=backend)
        return {"thresholds": np.asarray(ds["threshold"].values[0], float), "n_parent": int(ds["n_parent"].values[0])}

    return _save(store_root, "control", name, fp, body())


def _inner_compute(graph, split):
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


def _t_flow_sample(sample, strategy, parent, markers, thresholds, flow_s, backend, density, store_root, fp,
                   split=False):
    from ..flow.calibration import analysed_volume_ul
    from ..flow.phenotypes import count_phenotypes, density2d
    from ..flow.transforms import LogTransform
    from ..io.fcs import read_fcs

    @_guard
    def body():
        path = str(sample["flow"])
        fcs = read_fcs(path, scale=True, chunk_events=int(flow_s.get("chunk_events", CHUNK_EVENTS)))
        mk = {m: (ch, float(t)) for (ch, m), t in zip(markers.items(), thresholds)}
        build, graph = count_phenotypes({sample["name"]: fcs}, parent=parent, strategy=strategy, markers=mk,
                                        backend=backend, compute=False)
        ds = build(_inner_compute(graph, split))
        item = {
            "counts": np.asarray(ds["count"].values[0], np.int64),
            "n_total": int(ds["n_total"].values[0]),
            "n_parent": int(ds["n_parent"].values[0]),
            "thresholds": np.asarray(ds["threshold"].values[0], float),
            "n_positive": np.asarray(ds["n_positive"].values[0], float),
            "median_positive": np.asarray(ds["median_positive"].values[0], float),
            "mean_positive": np.asarray(ds["mean_positive"].values[0], float),
            "sha256": file_sha256(path),
            "instrument": str(fcs.meta.get("$CYT", "")).strip(),
        }
        try:
            vol = analysed_volume_ul(fcs, volume_ul=sample.get("volume_ul"),
                                     flow_rate_ul_per_min=None if sample.get("volume_ul") else flow_s.get("flow_rate_ul_per_min"),
                                     time_channel=flow_s.get("time_channel"))
            item["volume_ul"] = float(vol["volume_ul"])
            item["volume_method"] = str(vol["method"])
        except EvflowError as exc:
            item["volume_ul"] = float("nan")
            item["volume_method"] = f"unknown ({exc})"
        if density is not None:
            # plots use the first DISPLAY_EVENTS events (the same for any chunking or backend)
            import dataclasses

            shown = dataclasses.replace(fcs, events=fcs.events[:DISPLAY_EVENTS]) if fcs.n_events > DISPLAY_EVENTS else fcs
            item["density_events"] = int(shown.n_events)
            x, y, (tx, mx), (ty, my) = density
            tr = {x: LogTransform(tx, mx), y: LogTransform(ty, my)}
            d_all = density2d(shown, x, y, bins=DENSITY_BINS, transforms=tr, backend=backend)
            item["density_all"] = np.asarray(d_all.values, np.int64)
            if parent is not None:
                d_par = density2d(shown, x, y, bins=DENSITY_BINS, transforms=tr, parent=parent, strategy=strategy,
                                  backend=backend)
                item["density_parent"] = np.asarray(d_par.values, np.int64)
            else:
                item["density_parent"] = item["density_all"]
        return item

    return _save(store_root, "flow", sample["name"], fp, body())


# =========================================================================== image tasks


def _t_image_control(sample_name, fov, path, img_s, registration, backend, store_root, fp):
    from .imaging import control_spots

    @_guard
    def body():
        item = control_spots(path, img_s, registration, backend=backend)
        item["sha256"] = file_sha256(path)
        return item

    return _save(store_root, "image_control", f"{sample_name}-fov{fov}", fp, body())


def _t_image_field(sample_name, fov, path, img_s, registration, thresholds, backend, store_root, fp):
    from .imaging import analyse_field

    @_guard
    def body():
        item = analyse_field(path, img_s, registration, thresholds=thresholds, backend=backend)
        item["sha256"] = file_sha256(path)
        return item

    return _save(store_root, "image", f"{sample_name}-fov{fov}", fp, body())


# =========================================================================== driver


def _gating(exp: Experiment, size_cal):
    """(strategy, parent id, description, list of scatter limits) from the experiment's gates."""
    from ..flow.gates import Dimension, GatingStrategy, RectangleGate

    gates_s = exp.flow.get("gates", {})
    strategy, parent, desc = None, None, []
    if "gatingml" in gates_s:
        from ..flow.gatingml import read_gatingml

        strategy = read_gatingml(exp.resolve(gates_s["gatingml"]))
        parent = gates_s["parent"]
        ids = strategy.gate_ids() if callable(strategy.gate_ids) else list(strategy.gate_ids)
        if parent not in ids:
            raise ConfigError(f"{exp.path}: 'flow.gates.parent' {parent!r} is not a gate of "
                              f"{gates_s['gatingml']} (gates: {ids})")
        desc.append(f"Gating-ML {gates_s['gatingml']}: {parent}")
    size_limits = None
    new = []
    if "size_nm" in gates_s:
        from ..flow.calibration import size_gate_limits

        lo_nm, hi_nm = gates_s["size_nm"]
        lo, hi = size_gate_limits(size_cal, float(lo_nm), float(hi_nm))
        size_limits = (lo, hi)
        new.append(("evflow_size", size_cal.channel, lo, hi))
        desc.append(f"size {lo_nm:g}-{hi_nm:g} nm = {size_cal.channel} {lo:.4g}-{hi:.4g}")
    for j, r in enumerate(gates_s.get("range", [])):
        lo, hi = r.get("min"), r.get("max")
        new.append((f"evflow_range_{j}", r["channel"], lo, hi))
        desc.append(f"{r['channel']} {lo if lo is not None else '-inf'}-{hi if hi is not None else 'inf'}")
    if new:
        strategy = strategy or GatingStrategy()
        for gid, ch, lo, hi in new:
            strategy.add_gate(RectangleGate(gid, [Dimension(ch)], [lo], [hi], parent=parent))
            parent = gid
    return strategy, parent, desc, size_limits


def _channel_top(path, channel):
    from ..io.fcs import read_fcs_metadata, read_fcs

    s = read_fcs(path)
    i = s.channel_index(channel)
    meta = read_fcs_metadata(path)
    try:
        return float(meta.get(f"$P{i + 1}R", 1e5)), s.channels[i]
    except ValueError:
        return 1e5, s.channels[i]


def run(config, *, output=None, backend=None, scheduler=None, resume: bool = True, progress: bool | None = None,
        quiet: bool = False, n_workers: int | None = None, report: bool = True):
    """Run an experiment: calibrate, gate, count phenotypes, write results and the report.

    Parameters
    ----------
    config : str, Path, dict or Experiment
        The experiment file (TOML or YAML) or its settings.
    output : str or Path, optional
        Output folder (default: ``[experiment].output``).
    backend : {'auto', 'numpy', 'cupy'}, optional
        Array backend (default: ``[experiment].backend``, else auto).
    scheduler : str or distributed.Client, optional
        'threads' (default), 'sync', 'processes', 'local-cuda', 'tcp://host:port' or a Client.
    resume : bool
        Reuse stored items whose fingerprint is unchanged (default True).
    progress : bool, optional
        Progress bars (default: on unless ``quiet``).
    quiet : bool
        Print only errors.
    n_workers : int, optional
        Worker processes for ``scheduler='processes'``.
    report : bool
        Write the HTML report.

    Returns
    -------
    xarray.Dataset
        Counts, fractions, concentrations, thresholds, medians and QC flags
        (sample x phenotype; imaging as ``image_*`` variables over
        image_sample x fov x image_phenotype), provenance in ``attrs``.
    """
    from .. import __version__
    from ..backend import resolve_backend

    exp = load_experiment(config, output=output)
    log = (lambda *a, **k: None) if quiet else (lambda *a, **k: print(*a, **k, file=sys.stderr))

    def err(*a):
        print(*a, file=sys.stderr)

    progress = (not quiet) if progress is None else progress
    be = resolve_backend(backend or exp.settings.get("experiment", {}).get("backend", "auto"))
    out = exp.output
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out)
    store.root.mkdir(parents=True, exist_ok=True)
    store.clean_temporaries()
    root = str(store.root)
    import dask

    failures: dict[str, str] = {}
    timings: dict[str, float] = {}

    def cached(kind, name, fp):
        return store.load(kind, name, fp) if resume else None

    flow_s, img_s = exp.flow, exp.imaging
    cal_s = flow_s.get("calibration", {})
    markers = exp.markers
    version = [PIPELINE_VERSION, __version__]
    log(f"evflow {__version__}: experiment {exp.name!r}, {len(exp.samples)} samples, backend {be}, output {out}")

    t_start = time.perf_counter()
    with scheduler_context(scheduler, n_workers=n_workers, log=log) as (sched, client):
        # ---------------------------------------------------------------- stage 1: calibration
        items, tasks, keys = {}, [], []
        cal_fps = {}
        for kind, fn in (("fluorescence", _t_fluorescence), ("size", _t_size)):
            c = cal_s.get(kind)
            if not c:
                continue
            path = exp.resolve(c["file"])
            fp = fingerprint(version, kind, file_fingerprint(path), c)
            cal_fps[kind] = fp
            hit = cached("calibration", kind, fp)
            if hit is not None:
                items[kind] = hit
            else:
                tasks.append(dask.delayed(fn, pure=False)(path, c, root, fp))
                keys.append(kind)
        if img_s.get("registration_beads"):
            path = exp.resolve(img_s["registration_beads"])
            fp = fingerprint(version, "registration", file_fingerprint(path), img_s)
            cal_fps["registration"] = fp
            hit = cached("calibration", "registration", fp)
            if hit is not None:
                items["registration"] = hit
            else:
                tasks.append(dask.delayed(_t_registration, pure=False)(path, img_s, root, fp))
                keys.append("registration")
        t0 = time.perf_counter()
        for k, res in zip(keys, _compute(tasks, "calibration", sched, client, progress, log)):
            items[k] = res
        timings["calibration_s"] = time.perf_counter() - t0
        for k, it in items.items():
            if "error" in it:
                raise EvflowError(f"calibration {k!r} failed, nothing else can be computed: {it['error']}")
        calibration = items
        size_cal = _rebuild_scatter(items["size"], cal_s["size"]) if "size" in items else None
        fluor = items.get("fluorescence")

        # ---------------------------------------------------------------- stage 2: controls / thresholds
        strategy, parent, gate_desc, size_limits = _gating(exp, size_cal) if flow_s else (None, None, [], None)
        gate_spec = {"gates": flow_s.get("gates", {}), "size_limits": size_limits,
                     "gatingml": file_fingerprint(exp.resolve(flow_s["gates"]["gatingml"]))
                     if "gatingml" in flow_s.get("gates", {}) else None}
        thr_s = exp.settings.get("thresholds", {})
        rule = experiment_rule(thr_s, "thresholds", default="control_quantile")
        thresholds = None
        control_items = {}
        if markers:
            if rule == "fixed":
                thresholds = np.array([float(thr_s["values"][m]) for m in markers.values()])
                threshold_desc = "fixed: " + ", ".join(f"{m} > {thr_s['values'][m]:g}" for m in markers.values())
            else:
                role = rule.control
                tasks, keys = [], []
                for s in exp.by_role(role):
                    if s.flow is None:
                        continue
                    fp = fingerprint(version, "control", file_fingerprint(s.flow), gate_spec, markers,
                                     rule.cache_key())
                    hit = cached("control", s.name, fp)
                    if hit is not None:
                        control_items[s.name] = hit
                    else:
                        tasks.append(dask.delayed(_t_control, pure=False)(
                            s.name, s.flow, strategy, parent, markers, rule, be, root, fp))
                        keys.append(s.name)
                t0 = time.perf_counter()
                for k, res in zip(keys, _compute(tasks, "controls", sched, client, progress, log)):
                    control_items[k] = res
                timings["controls_s"] = time.perf_counter() - t0
                good = {k: v for k, v in control_items.items() if "error" not in v}
                for k, v in control_items.items():
                    if "error" in v:
                        failures[f"control {k}"] = v["error"]
                        err(f"error: control {k}: {v['error']}")
                if not good:
                    raise EvflowError(f"no usable {role!r} control: thresholds cannot be set ({failures})")
                thresholds = np.max(np.stack([good[k]["thresholds"] for k in sorted(good)]), axis=0)
                threshold_desc = (f"{rule.statistic_name} of the {role} control(s) "
                                  f"({', '.join(sorted(good))}) in the parent gate; max over controls")

        # ---------------------------------------------------------------- stage 2b: imaging thresholds
        registration = calibration.get("registration")
        image_thresholds, image_threshold_desc, image_control_items = None, "", {}
        img_rule = experiment_rule(img_s.get("thresholds", {}), "imaging.thresholds", default="detected",
                                   keywords=("detected", "fixed")) if img_s else None
        if isinstance(img_rule, ThresholdRule):
            from .imaging import image_thresholds as _image_thresholds

            role = img_rule.control
            tasks, keys = [], []
            for s in exp.by_role(role):
                for f, p in enumerate(s.images):
                    fp = fingerprint(version, "image_control", file_fingerprint(p), img_s,
                                     cal_fps.get("registration"))
                    hit = cached("image_control", f"{s.name}-fov{f}", fp)
                    if hit is not None:
                        image_control_items[(s.name, f)] = hit
                    else:
                        tasks.append(dask.delayed(_t_image_control, pure=False)(
                            s.name, f, p, img_s, registration, be, root, fp))
                        keys.append((s.name, f))
            t0 = time.perf_counter()
            for k, res in zip(keys, _compute(tasks, "image controls", sched, client, progress, log)):
                image_control_items[k] = res
            timings["image_controls_s"] = time.perf_counter() - t0
            for k, v in image_control_items.items():
                if "error" in v:
                    failures[f"image control {k[0]} fov {k[1]}"] = v["error"]
                    err(f"error: image control {k[0]} fov {k[1]}: {v['error'].splitlines()[0]}")
            good = {k: v for k, v in sorted(image_control_items.items()) if "error" not in v}
            if not good:
                raise EvflowError(f"no usable {role!r} image fields: imaging thresholds cannot be set ({failures})")
            image_thresholds, image_threshold_desc = _image_thresholds(img_s, good)
        elif img_s:
            from .imaging import image_thresholds as _image_thresholds

            image_thresholds, image_threshold_desc = _image_thresholds(img_s, {})

        # ---------------------------------------------------------------- stage 3: samples and fields
        density = None
        flow_samples = [s for s in exp.samples if s.flow is not None and s.role != "beads"]
        if flow_samples and markers and flow_s.get("scatter_channel"):
            first = flow_samples[0].flow
            tx, x = _channel_top(first, flow_s["scatter_channel"])
            ty, y = _channel_top(first, next(iter(markers)))
            density = (x, y, (tx, max(math.log10(tx) + 1.0, 1.0)), (ty, max(math.log10(ty) + 1.0, 1.0)))
        tasks, keys = [], []
        flow_items, image_items = {}, {}
        pending = []
        for s in flow_samples:
            sd = {"name": s.name, "flow": str(s.flow), "volume_ul": s.volume_ul}
            fp = fingerprint(version, "flow", file_fingerprint(s.flow), gate_spec, markers,
                             None if thresholds is None else thresholds, sd,
                             {k: flow_s.get(k) for k in ("flow_rate_ul_per_min", "time_channel")}, density,
                             int(flow_s.get("chunk_events", CHUNK_EVENTS)))
            hit = cached("flow", s.name, fp)
            if hit is not None:
                flow_items[s.name] = hit
            else:
                pending.append((s.name, sd, fp))
        # few samples on a cluster: each sample's row chunks are spread over the workers too
        # (results do not depend on it: the chunking is the same on every scheduler)
        split = client is not None and len(pending) < SPLIT_SAMPLES_PER_THREAD * max(1, sum(client.nthreads().values()))
        timings["split_samples"] = bool(split)
        thr = thresholds if thresholds is not None else np.zeros(0)
        for name, sd, fp in pending:
            tasks.append(dask.delayed(_t_flow_sample, pure=False)(
                sd, strategy, parent, markers, thr, flow_s, be, density, root, fp, split))
            keys.append(("flow", name))
        for s in exp.samples:
            for f, p in enumerate(s.images):
                fp = fingerprint(version, "image", file_fingerprint(p), img_s, cal_fps.get("registration"),
                                 image_thresholds)
                name = f"{s.name}-fov{f}"
                hit = cached("image", name, fp)
                if hit is not None:
                    image_items[(s.name, f)] = hit
                else:
                    tasks.append(dask.delayed(_t_image_field, pure=False)(s.name, f, p, img_s, registration,
                                                                          image_thresholds, be, root, fp))
                    keys.append(("image", (s.name, f)))
        t0 = time.perf_counter()
        for (kind, k), res in zip(keys, _compute(tasks, "samples", sched, client, progress, log)):
            (flow_items if kind == "flow" else image_items)[k] = res
        timings["samples_s"] = time.perf_counter() - t0
        timings["computed_items"] = len(tasks)
        done = dict(zip(keys, [None] * len(keys)))
        timings["flow_task_s"] = sum(float(flow_items[k].get("seconds", 0.0)) for kind, k in done if kind == "flow")
        timings["image_task_s"] = sum(float(image_items[k].get("seconds", 0.0)) for kind, k in done if kind == "image")
    for k, v in list(flow_items.items()):
        if "error" in v:
            failures[f"flow {k}"] = v["error"]
            err(f"error: sample {k}: {v['error'].splitlines()[0]}")
            del flow_items[k]
    for k, v in list(image_items.items()):
        if "error" in v:
            failures[f"image {k[0]} fov {k[1]}"] = v["error"]
            err(f"error: image {k[0]} fov {k[1]}: {v['error'].splitlines()[0]}")
            del image_items[k]

    # -------------------------------------------------------------------- assemble and write
    from .results import assemble, write_outputs

    ctx = {
        "experiment": exp, "backend": be, "markers": markers, "flow_items": flow_items,
        "image_items": image_items, "calibration": calibration, "size_cal": size_cal, "fluor": fluor,
        "gate_desc": gate_desc, "size_limits": size_limits, "failures": failures, "density": density,
        "threshold_desc": threshold_desc if markers else "", "control_items": control_items,
        "image_thresholds": image_thresholds, "image_threshold_desc": image_threshold_desc,
    }
    ds = assemble(ctx)
    spots = None
    if img_s:
        from .imaging import spots_table

        spots = spots_table(image_items, list(img_s["channels"]), [s.name for s in exp.samples])
    write_outputs(ds, out, spots=spots)
    if report:
        from .report import write_report

        write_report(ds, ctx, out / "report.html")
    timings["total_s"] = time.perf_counter() - t_start
    log(f"done in {timings['total_s']:.1f} s ({timings['computed_items']} item(s) computed); "
        f"results in {out}" + (f"; {len(failures)} failure(s)" if failures else ""))
    ds.attrs["_timings"] = json.dumps(timings)  # not written to disk (set after writing)
    return ds
