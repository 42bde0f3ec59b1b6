"""Batch pipeline: one experiment file -> results.zarr, tidy tables, HTML report.

Stages (each one dask computation, with a progress bar):

1. calibration: MESF beads, size beads (scatter -> diameter), imaging
   registration beads;
2. controls: positivity thresholds from the control samples (flow, then
   image fields);
3. samples: one task per flow sample and per image field.

Every item is written atomically to the result store with a fingerprint of
its inputs and settings (:mod:`evflow.pipeline.store`); a rerun skips the
items whose fingerprint is unchanged.  A failing item is reported and does
not stop the others.  The same graph runs on the threaded scheduler, a local
process cluster, a dask-cuda cluster or an existing ``distributed``
scheduler (:mod:`evflow.pipeline.scheduler`).  The stages are
:class:`~evflow.pipeline.stage.Stage` objects; their bodies live in
:mod:`evflow.pipeline.flow` and :mod:`evflow.pipeline.imaging`.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from ..errors import EvflowError
from ..flow.thresholds import ThresholdRule, experiment_rule
from . import copies as cp, flow as fl, imaging as im
from .config import load_experiment
from .flow_qc import qc_settings
from .image_inputs import field_fingerprint
from .inputs import flow_offsets, flow_scale, offsets_entry
from .scheduler import split_samples
from .stage import RunContext, Runner
from .store import ResultStore, file_fingerprint

__all__ = ["run", "PIPELINE_VERSION"]

#: bump when a change in the pipeline changes stored items
PIPELINE_VERSION = "4"  # 4: flow items hold the plotted events (display_*), MESF items their calibration


def _fov(key) -> str:
    return f"{key[0]}-fov{key[1]}"


def run(config, *, output=None, backend=None, scheduler=None, resume: bool = True, progress: bool | None = None,
        quiet: bool = False, verbose: bool = False, n_workers: int | None = None, report: bool = True,
        force: bool = False):
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
        Progress bars (default: on when standard error is a terminal and not ``quiet``). Without
        them (a batch job's redirected log) each stage logs one line with its counts and seconds.
    quiet : bool
        Print only errors.
    verbose : bool
        Also log one line per item (sample, field, control) with its time or error.
    n_workers : int, optional
        Worker processes for ``scheduler='processes'``.
    report : bool
        Write the HTML report.
    force : bool
        Write into a non-empty folder that evflow did not create (beside its files, never replacing them).

    Returns
    -------
    xarray.Dataset
        Counts, fractions, concentrations, thresholds, medians and QC flags
        (sample x phenotype; imaging as ``image_*`` variables over
        image_sample x fov x image_phenotype), provenance in ``attrs``.
    """
    from .outdir import OutputFolder

    exp = load_experiment(config, output=output)
    with OutputFolder(exp.output, force=force) as folder:  # owned, locked, cleaned; see outdir.py
        return _run(exp, folder, backend=backend, scheduler=scheduler, resume=resume, progress=progress,
                    quiet=quiet, verbose=verbose, n_workers=n_workers, report=report)


def _run(exp, folder, *, backend, scheduler, resume, progress, quiet, verbose, n_workers, report):
    from .. import __version__
    from ..backend import resolve_backend
    from .results import assemble, write_outputs

    log = (lambda *a, **k: None) if quiet else (lambda *a, **k: print(*a, **k, file=sys.stderr))

    def err(*a):
        print(*a, file=sys.stderr)

    if progress is None:
        progress = not quiet and getattr(sys.stderr, "isatty", lambda: False)()
    be = resolve_backend(backend or exp.settings.get("experiment", {}).get("backend", "auto"))
    out = exp.output
    store = ResultStore(out)
    store.root.mkdir(parents=True, exist_ok=True)
    store.clean_temporaries()
    flow_s, img_s, markers = exp.flow, exp.imaging, exp.markers
    cal_s = flow_s.get("calibration", {})
    ctx = RunContext(experiment=exp, backend=be, markers=markers)
    okey = {s.name: f"samples[{i}].data_offsets" for i, s in enumerate(exp.samples)}  # named by offsets errors
    timings: dict = {}
    log(f"evflow {__version__}: experiment {exp.name!r}, {len(exp.samples)} samples, backend {be}, output {out}")

    t_start = time.perf_counter()
    with Runner.open(store, scheduler=scheduler, n_workers=n_workers, log=log, version=[PIPELINE_VERSION, __version__],
                     resume=resume, progress=progress, verbose=verbose and not quiet) as runner:
        # ---------------------------------------------------------------- stage 1: calibration
        cal_stages = []
        for kind, body, c in (("fluorescence", fl.fluorescence_item, cal_s.get("fluorescence")),
                              ("size", fl.size_item, cal_s.get("size")),
                              ("registration", im.registration_from_beads, img_s or None)):
            file = (c or {}).get("registration_beads" if kind == "registration" else "file")
            if file and kind != "registration":
                # the bead file's values on the experiment's scale policy, its DATA where the experiment says
                c = {**c, "scale": flow_scale(flow_s), **offsets_entry(flow_offsets(c, flow_s))}
            if file:
                path = exp.resolve(file)
                cal_stages.append(runner.stage("calibration", body))
                cal_stages[-1].add(kind, [kind, file_fingerprint(path), c], path, c)
        timings["calibration_s"] = runner.run("calibration", *cal_stages)
        ctx.calibration = {k: v for st in cal_stages for k, v in st.items.items()}
        reg_fp = {k: v for st in cal_stages for k, v in st.fingerprints.items()}.get("registration")
        for k, it in ctx.calibration.items():
            if "error" in it:
                raise EvflowError(f"calibration {k!r} failed, nothing else can be computed: {it['error']}")
        ctx.size_cal = fl.scatter_calibration(ctx.calibration, cal_s)
        ctx.fluor = ctx.calibration.get("fluorescence")
        registration = ctx.calibration.get("registration")

        # ---------------------------------------------------------------- stage 2: controls / thresholds
        strategy, parent, ctx.gate_desc, ctx.size_limits = (fl.gating(exp, ctx.size_cal) if flow_s
                                                            else (None, None, [], None))
        ctx.strategy, ctx.parent = strategy, parent  # the report draws these gates
        gate_spec = {"gates": flow_s.get("gates", {}), "size_limits": ctx.size_limits,
                     "gatingml": file_fingerprint(exp.resolve(flow_s["gates"]["gatingml"]))
                     if "gatingml" in flow_s.get("gates", {}) else None}
        thr_s = exp.settings.get("thresholds", {})
        rule = experiment_rule(thr_s, "thresholds", default="control_quantile")
        thresholds = None
        if markers and rule == "fixed":
            thresholds = np.array([float(thr_s["values"][m]) for m in markers.values()])
            ctx.threshold_desc = "fixed: " + ", ".join(f"{m} > {thr_s['values'][m]:g}" for m in markers.values())
        elif markers:
            role = rule.control
            controls = runner.stage("control", fl.control_item, strategy=strategy, parent=parent, markers=markers,
                                    rule=rule, backend=be, scale=flow_scale(flow_s))
            for s in exp.by_role(role):
                if s.flow is not None:
                    controls.add(s.name, ["control", file_fingerprint(s.flow), gate_spec, markers, rule.cache_key(),
                                          flow_scale(flow_s), *offsets_entry(s.data_offsets).values()],
                                 s.name, s.flow, s.data_offsets, okey[s.name])
            timings["controls_s"] = runner.run("controls", controls)
            ctx.control_items = controls.items
            controls.report_failures(ctx.failures, err, first_line=False)
            thresholds, ctx.threshold_desc = fl.control_thresholds(controls, rule, ctx.failures)

        # ---------------------------------------------------------------- stage 2b: imaging thresholds
        image_controls = {}
        img_rule = experiment_rule(img_s.get("thresholds", {}), "imaging.thresholds", default="detected",
                                   keywords=("detected", "fixed")) if img_s else None
        if isinstance(img_rule, ThresholdRule):
            role = img_rule.control
            stage = runner.stage("image_control", im.control_item, name=_fov, img_s=img_s,
                                 what=lambda k: f"image control {k[0]} fov {k[1]}",
                                 registration=registration, backend=be)
            for s in exp.by_role(role):
                for f, p in enumerate(s.images):
                    stage.add((s.name, f), ["image_control", field_fingerprint(p, file_fingerprint), img_s, reg_fp], p)
            timings["image_controls_s"] = runner.run("image controls", stage)
            stage.report_failures(ctx.failures, err)
            image_controls = dict(sorted(stage.good.items()))
            if not image_controls:
                raise EvflowError(f"no usable {role!r} image fields: imaging thresholds cannot be set ({ctx.failures})")
        if img_s:
            ctx.image_thresholds, ctx.image_threshold_desc = im.image_thresholds(img_s, image_controls)

        # ---------------------------------------------------------------- stage 3: samples and fields
        flow_samples = [s for s in exp.samples if s.flow is not None and s.role != "beads"]
        ctx.density = fl.density_spec(flow_samples, markers, flow_s, okey[flow_samples[0].name] if flow_samples else None)
        chunk_events = int(flow_s.get("chunk_events", fl.CHUNK_EVENTS))
        cspec = cp.flow_copies_spec(exp, ctx.fluor)  # fluorophores per event from MESF ([flow.copies])
        samples = runner.stage("flow", fl.flow_sample_item, shown=lambda k: f"sample {k}", strategy=strategy,
                               parent=parent, markers=markers, flow_s=flow_s, backend=be, density=ctx.density,
                               thresholds=thresholds if thresholds is not None else np.zeros(0), copies=cspec)
        for s in flow_samples:
            sd = {"name": s.name, "flow": str(s.flow), "volume_ul": s.volume_ul, "role": s.role, "qc": qc_settings(exp),
                  **offsets_entry(s.data_offsets)}  # (no key when "auto": fingerprints as before)
            samples.add(s.name, ["flow", file_fingerprint(s.flow), gate_spec, markers, thresholds, sd,
                                 {k: flow_s.get(k) for k in ("flow_rate_ul_per_min", "time_channel", "scale")}, ctx.density,
                                 chunk_events, *([cspec] if cspec else [])], sd, okey[s.name])
        # few samples on a cluster: each sample's row chunks are spread over the workers too
        samples.params["split"] = timings["split_samples"] = bool(split_samples(runner.client, len(samples.pending)))
        fields = runner.stage("image", im.field_item, name=_fov, what=lambda k: f"image {k[0]} fov {k[1]}",
                              img_s=img_s, registration=registration, thresholds=ctx.image_thresholds, backend=be)
        for s in exp.samples:
            for f, p in enumerate(s.images):
                fields.add((s.name, f), ["image", field_fingerprint(p, file_fingerprint), img_s, reg_fp,
                                         ctx.image_thresholds], p)
        bleach = cp.bleaching_stage(runner, exp, img_s)  # one task per bleaching movie
        timings["samples_s"] = runner.run("samples", samples, fields, bleach)
        timings["computed_items"] = len(samples.pending) + len(fields.pending) + len(bleach.pending)
        timings["flow_task_s"] = samples.task_seconds
        timings["image_task_s"] = fields.task_seconds
        timings["image_step_s"] = fields.step_seconds()  # per step (read, detect, ..., write), summed over fields
    samples.report_failures(ctx.failures, err)
    fields.report_failures(ctx.failures, err)
    bleach.report_failures(ctx.failures, err)
    ctx.flow_items, ctx.image_items = samples.good, fields.good
    ctx.copies = cp.unit_brightness_per_marker(exp, bleach.good, ctx.failures) if bleach.items else {}

    # -------------------------------------------------------------------- assemble and write
    t_out = time.perf_counter()
    ds = assemble(ctx)
    spots = im.spots_table(ctx.image_items, list(img_s["channels"]), [s.name for s in exp.samples]) if img_s else None
    spots = cp.add_copies_columns(spots, ctx.copies)  # fluorophores_<m>, antibodies_<m> (markers with a unit)
    gen = folder.new_generation()  # a complete new set of outputs, switched in at once
    try:
        write_outputs(ds, gen, spots=spots)
        if report:
            from .report import write_report

            write_report(ds, ctx, gen / "report.html")
    except OSError as exc:
        from ..errors import OutputError

        raise OutputError(f"output folder {out}: cannot write the results ({exc.strerror or exc}"
                          f"{': ' + str(exc.filename) if exc.filename else ''}); the previous outputs are "
                          "left as they were") from None
    folder.commit(gen)
    timings["outputs_s"] = time.perf_counter() - t_out
    timings["total_s"] = time.perf_counter() - t_start
    log(f"done in {timings['total_s']:.1f} s ({timings['computed_items']} item(s) computed); "
        f"results in {out}" + (f"; {len(ctx.failures)} failure(s)" if ctx.failures else ""))
    ds.attrs["_timings"] = json.dumps(timings)  # not written to disk (set after writing)
    return ds
