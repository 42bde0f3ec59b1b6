"""Benchmark: a batch experiment through ``evflow.run`` on threads vs a 2-worker LocalCluster, with FlowKit as peer.

Builds N synthetic EV samples of E events (FCS 3.1; SSC-H, FL1-H, FL2-H,
Time), size beads, an isotype control and F image fields (3 channels), then in
one run times:

- evflow on the threaded scheduler (whole pipeline: calibration, thresholds,
  gating + phenotype counting, imaging, outputs, report);
- evflow on a ``distributed.LocalCluster`` of 2 worker processes;
- a read-only pass over the same FCS files (``read_fcs(scale=True)``, all
  events to memory) to give the share of the sample stage spent reading;
- FlowKit (peer): the same size gate and marker gates from a Gating-ML file,
  one ``Sample`` + ``gate_sample`` per file, sequentially; its counts are
  checked against evflow's.

    python benchmarks/bench_pipeline.py [--samples 50] [--events 1000000] [--fields 20] [--field-px 512]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, table  # noqa: E402


def build(root: Path, n_samples, n_events, n_fields, field_px):
    import tifffile

    from evflow.io.fcs import write_fcs
    from evflow.pipeline.demo import SIZE_BEADS_NM, _ev_frame
    from evflow.synth import tirf
    from evflow.synth.flow import synthetic_size_beads

    (root / "flow").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    size = synthetic_size_beads(SIZE_BEADS_NM, n_per_population=2000, channel="SSC-H", seed=2)
    write_fcs(root / "flow" / "size.fcs", size.to_numpy(), list(size.columns))
    samples = []
    for i in range(n_samples + 1):
        name = "isotype" if i == n_samples else f"S{i:03d}"
        df, _ = _ev_frame(n_events, 0.0 if name == "isotype" else 0.6, 0.0 if name == "isotype" else 0.05 + 0.005 * i,
                          seed=100 + i)
        write_fcs(root / "flow" / f"{name}.fcs", df.to_numpy(np.float32), list(df.columns))
        samples.append({"name": name, "role": "isotype" if name == "isotype" else "sample", "flow": f"flow/{name}.fcs"})
    kw = dict(shape=(field_px, field_px), markers=["CD9", "CD63", "CD81"], camera="scmos", offset=100.0, gain=2.0,
              photons=1500.0, min_separation_px=6.0, edge_margin_px=4.0)
    reg = tirf(n_vesicles=80, phenotype_fractions={7: 1.0}, seed=5, **{**kw, "photons": 4000.0})
    tifffile.imwrite(root / "images" / "beads.tif", reg.images.values[0])
    syn = tirf(n_fields=n_fields, seed=6, **kw)
    files = []
    for f in range(n_fields):
        tifffile.imwrite(root / "images" / f"f{f}.tif", syn.images.values[f])
        files.append(f"images/f{f}.tif")
    samples[0]["images"] = files
    return samples


def write_experiment(root: Path, samples, thresholds):
    lines = [
        "[experiment]", 'name = "benchmark"',
        "[flow]", 'scatter_channel = "SSC-H"', 'markers = { "FL1-H" = "CD63", "FL2-H" = "EpCAM" }',
        "flow_rate_ul_per_min = 3.0",
        "[flow.calibration.size]", 'file = "flow/size.fcs"', 'channel = "SSC-H"', "diameters_nm = [100, 200, 300, 400, 500]",
        "[flow.gates]", "size_nm = [80.0, 400.0]",
    ]
    if thresholds is None:
        lines += ["[thresholds]", 'rule = "control_quantile"', 'control = "isotype"', "quantile = 0.995"]
    else:
        lines += ["[thresholds]", 'rule = "fixed"', f"values = {{ CD63 = {thresholds[0]!r}, EpCAM = {thresholds[1]!r} }}"]
    lines += ["[imaging]", 'channels = ["CD9", "CD63", "CD81"]', "pixel_size_nm = 108.0", "psf_sigma_px = 1.3",
              "camera_offset = 100.0", "camera_gain = 2.0", 'registration_beads = "images/beads.tif"']
    for s in samples:
        lines.append("[[samples]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in s.items()]
    p = root / "experiment.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def flowkit_counts(root, samples, size_limits, thresholds):
    import flowkit as fk

    from evflow.flow.gates import Dimension, GatingStrategy, RectangleGate
    from evflow.flow.gatingml import write_gatingml

    gs = GatingStrategy()
    gs.add_gate(RectangleGate("size", [Dimension("SSC-H")], [size_limits[0]], [size_limits[1]]))
    gs.add_gate(RectangleGate("CD63pos", [Dimension("FL1-H")], [thresholds[0]], [None], parent="size"))
    gs.add_gate(RectangleGate("EpCAMpos", [Dimension("FL2-H")], [thresholds[1]], [None], parent="size"))
    gml = root / "gates.xml"
    write_gatingml(gs, gml)
    out = {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strat = fk.parse_gating_xml(str(gml))
        for s in samples:
            res = strat.gate_sample(fk.Sample(str(root / s["flow"])))
            out[s["name"]] = (res.get_gate_count("size"), res.get_gate_count("CD63pos"), res.get_gate_count("EpCAMpos"))
    return time.perf_counter() - t0, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--fields", type=int, default=20)
    ap.add_argument("--field-px", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-flowkit", action="store_true")
    ap.add_argument("--keep", default=None, help="keep the data in this folder")
    a = ap.parse_args(argv)

    from evflow import read_fcs, run

    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="evflow-bench-"))
    t0 = time.perf_counter()
    samples = build(root, a.samples, a.events, a.fields, a.field_px)
    t_build = time.perf_counter() - t0
    flow_samples = [s for s in samples if s["role"] == "sample"]
    exp = write_experiment(root, samples, None)
    rows = []

    t0 = time.perf_counter()
    ds_t = run(exp, output=root / "out_threads", resume=False, quiet=True)
    wall_threads = time.perf_counter() - t0
    tim = json.loads(ds_t.attrs["_timings"])
    rows.append(["evflow, threads (first run in this process)", f"{wall_threads:.1f}", f"{tim['samples_s']:.2f}"])

    import distributed

    with distributed.LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        t0 = time.perf_counter()
        ds_p = run(exp, output=root / "out_cluster", resume=False, quiet=True, scheduler=cluster.scheduler_address)
        wall_cluster = time.perf_counter() - t0
    timp = json.loads(ds_p.attrs["_timings"])
    same = bool((ds_t["count"] == ds_p["count"]).all() and (ds_t["image_count"] == ds_p["image_count"]).all())
    rows.append([f"evflow, LocalCluster ({a.workers} processes, dask defaults)", f"{wall_cluster:.1f}",
                 f"{timp['samples_s']:.2f}"])
    # the same with the worker malloc setting that `evflow run --scheduler processes` uses
    import dask

    from evflow.pipeline.scheduler import WORKER_MMAP_THRESHOLD

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": WORKER_MMAP_THRESHOLD}):
        with distributed.LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as cluster:
            t0 = time.perf_counter()
            ds_m = run(exp, output=root / "out_cluster_mmap", resume=False, quiet=True,
                       scheduler=cluster.scheduler_address)
            wall_m = time.perf_counter() - t0
    timm = json.loads(ds_m.attrs["_timings"])
    same = same and bool((ds_t["count"] == ds_m["count"]).all())
    rows.append([f"evflow, LocalCluster ({a.workers} processes, MALLOC_MMAP_THRESHOLD_=64 MiB as "
                 "`--scheduler processes`)", f"{wall_m:.1f}", f"{timm['samples_s']:.2f}"])

    t0 = time.perf_counter()
    for s in samples:
        if "flow" in s:
            read_fcs(root / s["flow"], scale=True).to_numpy()
    t_read = time.perf_counter() - t0
    share = t_read / tim["samples_s"] if tim["samples_s"] > 0 else float("nan")

    fk_note = ""
    if not a.no_flowkit:
        try:
            from evflow.pipeline import load_experiment
            from evflow.pipeline.flow import _rebuild_scatter, gating
            from evflow.pipeline.store import ResultStore

            thr = [float(v) for v in ds_t["threshold"].values[0]]
            # evflow with the same fixed thresholds, to compare counts gate by gate
            exp2 = write_experiment(root, samples, thr)
            ds_f = run(exp2, output=root / "out_fixed", resume=False, quiet=True)
            e = load_experiment(exp2)
            item = ResultStore(root / "out_fixed").load("calibration", "size")
            sc = _rebuild_scatter(item, e.flow["calibration"]["size"])
            _s, _p, _d, limits = gating(e, sc)
            t_fk, fk = flowkit_counts(root, flow_samples, limits, thr)
            agree = all(
                fk[s["name"]][0] == int(ds_f["n_parent"].sel(sample=s["name"]))
                and fk[s["name"]][1] == int(ds_f["count"].sel(sample=s["name"])[[1, 3]].sum())
                and fk[s["name"]][2] == int(ds_f["count"].sel(sample=s["name"])[[2, 3]].sum())
                for s in flow_samples
            )
            rows.append(["FlowKit, sequential loop (flow gating + counts only)", "-", f"{t_fk:.2f}"])
            fk_note = f"FlowKit counts equal to evflow's (size gate, CD63+, EpCAM+ per sample): {agree}"
        except Exception as exc:  # the peer is optional
            fk_note = f"FlowKit not run ({type(exc).__name__}: {exc})"

    print(f"# evflow pipeline benchmark\n\n{machine()}\n")
    print(f"{a.samples} samples x {a.events:,} events (+ isotype, size beads), {a.fields} image fields of "
          f"{a.field_px}x{a.field_px} px x 3 channels; data written in {t_build:.1f} s\n")
    print(table(["run", "whole pipeline (s)", "sample stage / flow gating (s)"], rows))
    print()
    print(f"- threaded run, summed task times: flow samples {tim['flow_task_s']:.2f} s "
          f"({tim['flow_task_s'] / max(len(samples) - 1, 1) * 1000:.0f} ms per sample: gating + phenotype counts, two "
          f"density plots, volume, SHA-256 of the file), image fields {tim['image_task_s']:.2f} s "
          f"({tim['image_task_s'] / max(a.fields, 1) * 1000:.0f} ms per field)")
    print()
    print(f"- threads and LocalCluster results identical: {same}; LocalCluster run spread each sample's row chunks "
          f"over the workers: {timp.get('split_samples', False)} (automatic: fewer than 2 samples per worker thread); "
          f"summed task times on the cluster: flow {timp['flow_task_s']:.2f} s, image {timp['image_task_s']:.2f} s "
          f"(dask defaults), flow {timm['flow_task_s']:.2f} s, image {timm['image_task_s']:.2f} s (64 MiB mmap "
          "threshold)")
    print("- the first run also pays one-time costs in the driver process (Mie tables of the scatter calibration, "
          "Numba cache loads); compare the sample-stage column for the schedulers")
    print(f"- reading all FCS files to memory (scale=True): {t_read:.1f} s = {100 * share:.0f} % of the threaded "
          f"sample stage (the rest is gating, counting, densities, imaging and hashing)")
    if fk_note:
        print(f"- {fk_note}")
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
