"""End to end on the synthetic demo experiment: truth recovery, outputs, resume, failures,
distributed scheduler, SIGKILL-and-resume, and the report in a real headless browser."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import evflow

SMALL = ["--events", "20000", "--fields", "1", "--field-px", "256"]


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "evflow", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`evflow demo --out DIR` (small), as a user runs it."""
    out = tmp_path_factory.mktemp("demo")
    r = _cli("demo", "--out", str(out), *SMALL, "-q")
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def _load(out):
    with xr.open_zarr(out / "results.zarr") as ds:
        return ds.load()


def _same(a, b):
    xr.testing.assert_equal(a, b)
    for k in ("config_hash", "input_files", "qc", "calibration", "gates", "threshold_rule"):
        assert a.attrs[k] == b.attrs[k], k


def test_demo_outputs_and_truth(demo_run):
    out, stdout = demo_run
    for name in ("results.zarr", "report.html", "counts.csv", "counts.parquet", "markers.csv", "markers.parquet"):
        assert (out / name).exists(), name
    assert "Recovered versus true" in stdout
    ds = _load(out)
    truth = json.loads((out / "data" / "truth.json").read_text())
    for name in ("S1", "S2", "S3", "S2_d2", "S2_d4", "S2_d8", "S1_detergent"):
        t = truth["flow"][name]
        frac = ds["fraction_of_parent"].sel(sample=name).values
        # phenotype fractions within 0.01 absolute of the truth in the 80-400 nm gate
        np.testing.assert_allclose(frac, t["fractions"], atol=0.01, err_msg=name)
        # concentration within 2 % (gate-edge blur from scatter noise and the Time-span volume)
        conc = float(ds["total_concentration_per_ml"].sel(sample=name))
        assert abs(conc / t["concentration_per_ml"] - 1) < 0.02, (name, conc, t["concentration_per_ml"])
    # tumour-marker (EpCAM) fraction rises S1 < S2 < S3 as designed
    ep = [float(ds["fraction_of_parent"].sel(sample=s)[[2, 3]].sum()) for s in ("S1", "S2", "S3")]
    assert ep[0] < ep[1] < ep[2]
    # the isotype threshold leaves ~0.5 % positives in the isotype control (99.5th percentile)
    iso = ds["fraction_of_parent"].sel(sample="isotype").values
    assert 0.003 < iso[1] < 0.007 and 0.003 < iso[2] < 0.007
    # calibrated medians of CD63+ events: MESF about 3000 * exp(0.3**2 / 2) brightness median 3000
    med = float(ds["median_positive_calibrated"].sel(sample="S2", marker="CD63"))
    assert 2500 < med < 3600, med
    # imaging: phenotype fractions of all vesicles recovered within 0.05 of the truth
    for name, t in truth["imaging"].items():
        frac = ds["image_fraction_all_fov"].sel(image_sample=name).values
        np.testing.assert_allclose(frac, t["fractions"], atol=0.05, err_msg=name)
        n = int(ds["image_count_all_fov"].sel(image_sample=name).sum())
        assert abs(n - t["n_vesicles"]) <= max(2, 0.05 * t["n_vesicles"])
    qc = json.loads(ds.attrs["qc"])
    assert qc["dilution_linearity"]["value"] > 0.99 and qc["dilution_linearity"]["pass"]
    assert 0.9 < qc["detergent_reduction"]["value"] < 0.99
    assert qc["buffer_fraction"]["value"] < 0.05
    # imaging thresholds: CD9 fixed, CD63 and CD81 from the isotype chip's photons (well below a vesicle's ~1500)
    thr = ds["image_threshold"].sel(image_sample="S2").values
    assert thr[0] == 300.0 and 10 < thr[1] < 150 and 10 < thr[2] < 150, thr
    assert "isotype chip" in ds.attrs["image_threshold_rule"]
    # the isotype chip: at most ~0.5 % false positives per marker
    iso_img = ds["image_fraction_all_fov"].sel(image_sample="isotype").values
    assert iso_img[1] > 0.95, iso_img  # CD9+ CD63- CD81- (bit 0: CD9, bit 1: CD63, bit 2: CD81)
    assert iso_img[[2, 3, 6, 7]].sum() < 0.02 and iso_img[[4, 5, 6, 7]].sum() < 0.02, iso_img
    prov = json.loads(ds.attrs["input_files"])
    assert len(prov) == 14 and all(len(h) == 64 for h in prov.values())
    # tidy tables: one row per sample x phenotype (flow) and per sample x fov x phenotype (imaging)
    counts = pd.read_parquet(out / "counts.parquet")
    assert (counts["modality"] == "flow").sum() == ds.sizes["sample"] * 4
    assert (counts["modality"] == "imaging").sum() == 4 * 1 * 8
    csv = pd.read_csv(out / "counts.csv")
    assert csv["count"].tolist() == counts["count"].tolist()
    row = counts[(counts["sample"] == "S3") & (counts["phenotype"] == "CD63+ EpCAM+")]
    assert int(row["count"].iloc[0]) == int(ds["count"].sel(sample="S3", phenotype="CD63+ EpCAM+"))


def test_demo_detection_limits(demo_run):
    """Noise level of the buffer (99.5th percentile), in MESF through the demo instrument's true curve."""
    from evflow.pipeline.demo import B, M

    out, _ = demo_run
    ds = _load(out)
    buffer = next(s for s in ds["sample"].values if str(ds["role"].sel(sample=s).values) == "buffer")
    fcs = evflow.read_fcs(out / "data" / "flow" / f"{buffer}.fcs", scale=True)
    k = list(ds["marker_channel"].values).index("FL1-H")
    fl1 = np.asarray(fcs.events[:, fcs.channel_index("FL1-H")].compute(), float)
    assert float(ds["detection_limit"].values[k]) == pytest.approx(np.percentile(fl1, 99.5), rel=1e-9)
    assert "99.5th percentile of the buffer" in ds["detection_limit"].attrs["criterion"]
    truth = math.exp(B) * float(ds["detection_limit"].values[k]) ** M
    assert float(ds["detection_limit_calibrated"].values[k]) == pytest.approx(truth, rel=0.05)
    assert ds["detection_limit_calibrated"].attrs["units"] == "MESF"
    assert 30 < float(ds["detection_limit_diameter_nm"]) < 110 and ds["detection_limit_diameter_nm"].attrs["units"] == "nm"


def test_demo_spots_table(demo_run):
    """One row per detected vesicle, consistent with the counts, at the true positions and brightness."""
    out, _ = demo_run
    ds = _load(out)
    spots = pd.read_parquet(out / "spots.parquet")
    csv = pd.read_csv(out / "spots.csv")
    assert len(csv) == len(spots) and np.allclose(csv["photons"], spots["photons"])
    for col in ("sample", "fov", "y", "x", "photons", "sigma", "phenotype", "bitmask", "photons_CD63",
                "detected_CD81"):
        assert col in spots, col
    # per sample and phenotype the table's rows are the stored counts
    for s in ds["image_sample"].values:
        got = spots[spots["sample"] == s].groupby("bitmask").size().reindex(range(8), fill_value=0).to_numpy()
        assert got.tolist() == ds["image_count"].sel(image_sample=s, fov=0).values.tolist(), s
    labels = dict(zip(ds["image_bitmask"].values.tolist(), ds["image_phenotype"].values.tolist()))
    assert (spots["phenotype"] == spots["bitmask"].map(labels)).all()
    # demo vesicles: PSF sigma 1.3 px, ~1500 photons per positive marker (log-normal, cv 0.25)
    assert abs(spots["sigma"].median() - 1.3) < 0.1
    assert 1200 < spots["photons"].median() < 2000
    # every simulated vesicle is one row (within the detection tolerance of the counts test), inside the field
    truth = json.loads((out / "data" / "truth.json").read_text())
    n = truth["imaging"]["S1"]["n_vesicles"]
    assert abs(len(spots[spots["sample"] == "S1"]) - n) <= max(2, 0.05 * n)
    assert spots["y"].between(0, 255).all() and spots["x"].between(0, 255).all()


def test_resume_skips_and_redoes_changed(demo_run, tmp_path):
    from evflow import run

    src, _ = demo_run
    data = tmp_path / "data"
    shutil.copytree(src / "data", data)
    out = tmp_path / "out"
    first = run(data / "experiment.toml", output=out, quiet=True)
    assert json.loads(first.attrs["_timings"])["computed_items"] > 10
    again = run(data / "experiment.toml", output=out, quiet=True)
    assert json.loads(again.attrs["_timings"])["computed_items"] == 0
    _same(first, again)
    # change one sample's file: only it is redone, and its numbers change
    import evflow

    s3 = evflow.read_fcs(data / "flow" / "S3.fcs")
    v = s3.to_numpy()[:10000]
    evflow.write_fcs(data / "flow" / "S3.fcs", v, s3.channels)
    third = run(data / "experiment.toml", output=out, quiet=True)
    assert json.loads(third.attrs["_timings"])["computed_items"] == 1
    assert int(third["n_total"].sel(sample="S3")) == 10000
    xr.testing.assert_equal(third.drop_sel(sample="S3")[["count"]], first.drop_sel(sample="S3")[["count"]])
    # --no-resume recomputes everything and gives the same numbers
    fourth = run(data / "experiment.toml", output=out, quiet=True, resume=False)
    assert json.loads(fourth.attrs["_timings"])["computed_items"] > 10
    _same(third, fourth)


def test_failing_sample_reported_others_complete(demo_run, tmp_path):
    src, _ = demo_run
    data = tmp_path / "data"
    shutil.copytree(src / "data", data)
    import evflow

    # a valid FCS file without events: it passes validation and fails when counted
    s = evflow.read_fcs(data / "flow" / "S2_d4.fcs")
    evflow.write_fcs(data / "flow" / "S2_d4.fcs", np.zeros((0, len(s.channels)), np.float32), s.channels)
    r = _cli("run", str(data / "experiment.toml"), "--out", str(tmp_path / "out"), "-q")
    assert r.returncode == 3, r.stderr
    assert "S2_d4" in r.stderr
    ds = _load(tmp_path / "out")
    assert "S2_d4" not in ds["sample"].values
    assert "has no events" in json.loads(ds.attrs["failed"])["flow S2_d4"]
    ref = _load(src)
    for s in ("S1", "S2", "S3"):
        assert ds["count"].sel(sample=s).values.tolist() == ref["count"].sel(sample=s).values.tolist()
    assert "Failed items" in (tmp_path / "out" / "report.html").read_text()


def test_distributed_local_cluster_identical(demo_run, tmp_path):
    distributed = pytest.importorskip("distributed")
    from evflow import run

    src, _ = demo_run
    ref = _load(src)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster:
        pids = []
        with distributed.Client(cluster) as client:
            pids = list(client.run(os.getpid).values())
            ds = run(src / "data" / "experiment.toml", output=tmp_path / "out", scheduler=cluster.scheduler_address,
                     quiet=True)
    assert len(set(pids)) == 2 and os.getpid() not in pids
    _same(ds, ref)
    _same(_load(tmp_path / "out"), ref)


def test_split_samples_on_cluster_identical(demo_run, tmp_path, monkeypatch):
    """Row chunks of each sample spread over the workers (few samples) give the threaded run's numbers."""
    distributed = pytest.importorskip("distributed")
    import importlib

    from evflow import run

    S = importlib.import_module("evflow.pipeline.scheduler")
    src, _ = demo_run
    data = tmp_path / "data"
    shutil.copytree(src / "data", data)
    exp = data / "experiment.toml"
    exp.write_text(exp.read_text().replace("[flow]\n", "[flow]\nchunk_events = 3000\n", 1))
    ref = run(exp, output=tmp_path / "threads", quiet=True)
    assert not json.loads(ref.attrs["_timings"])["split_samples"]
    monkeypatch.setattr(S, "SPLIT_SAMPLES_PER_THREAD", 100)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster:
        ds = run(exp, output=tmp_path / "cluster", scheduler=cluster.scheduler_address, quiet=True, report=False)
    assert json.loads(ds.attrs["_timings"])["split_samples"]
    _same(ds, ref)
    # the chunking is part of each sample's fingerprint; counts do not depend on it
    np.testing.assert_array_equal(ds["count"].values, _load(src)["count"].values)


def test_sigkill_then_resume_identical(demo_run, tmp_path):
    """SIGKILL while the per-sample items are being written, then a rerun: only the missing items are
    computed and the results equal the uninterrupted run's."""
    from evflow import run

    src, _ = demo_run
    ref = _load(src)
    out = tmp_path / "out"
    items = out / ".evflow" / "items"

    def sample_items():
        if not items.is_dir():
            return []
        return sorted(p.name for p in items.iterdir()
                      if p.suffix == ".npz" and (p.name.startswith("flow-") or p.name.startswith("image-")))

    # 10 flow samples and 4 image fields: the sample stage writes 14 items, one by one
    n_items = 14
    proc = subprocess.Popen([sys.executable, "-m", "evflow", "run", str(src / "data" / "experiment.toml"),
                             "--out", str(out), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 120 and proc.poll() is None:
        if sample_items():  # the first sample item is in place: the run is inside the sample stage
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.zarr").exists()
    done = sample_items()
    print(f"killed after {len(done)} of {n_items} sample items")
    assert 1 <= len(done) < n_items, done
    # calibration and threshold items were all written before the sample stage started
    names = {p.name for p in items.glob("*.npz")}
    assert {"calibration-fluorescence.npz", "calibration-size.npz", "calibration-registration.npz",
            "control-isotype.npz", "image_control-isotype-fov0.npz"} <= names
    # every file under a final name is complete
    for p in items.glob("*.npz"):
        with np.load(p) as z:
            assert "__meta__" in z.files
    again = run(src / "data" / "experiment.toml", output=out, quiet=True)
    assert json.loads(again.attrs["_timings"])["computed_items"] == n_items - len(done)
    assert not list(items.glob(".*.tmp"))
    _same(_load(out), ref)
    _same(again, ref)


def test_report_in_headless_browser(demo_run, tmp_path, headless_chromium):
    out, _ = demo_run
    report = out / "report.html"
    text = report.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text.lower()
    assert text.count("data:image/png;base64,") >= 7
    base = [*headless_chromium, "--enable-logging=stderr", "--v=0"]
    shot = tmp_path / "shot.png"
    r = subprocess.run(base + [f"--screenshot={shot}", "--window-size=1400,5000", report.as_uri()],
                       capture_output=True, text=True, timeout=120)
    log = r.stdout + r.stderr
    assert shot.is_file(), log
    bad = [ln for ln in log.splitlines() if "Uncaught" in ln or ("CONSOLE" in ln and "error" in ln.lower())
           or "Failed to load resource" in ln or "net::ERR" in ln]
    assert not bad, bad
    dom = subprocess.run(base + ["--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.stdout.count("<img") >= 7 and "Quality control" in dom.stdout
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] >= 4000 and img.shape[1] >= 1300
    # the plots are there: many coloured (not grey) pixels, e.g. viridis density plots and bar charts
    sat = img.max(axis=2) - img.min(axis=2)
    assert (sat > 0.3).mean() > 0.02, (sat > 0.3).mean()
    # each of the top 3000 px has content (tables and figures), not a blank page
    assert img[:3000].std() > 0.1


@pytest.mark.gpu
def test_cupy_backend_matches_numpy(demo_run, tmp_path):
    """The whole demo on the GPU: flow numbers identical to the CPU run, imaging counts within a vesicle or two."""
    from evflow import run

    src, _ = demo_run
    ref = _load(src)
    ds = run(src / "data" / "experiment.toml", output=tmp_path / "out", backend="cupy", quiet=True)
    assert ds.attrs["backend"] == "cupy"
    flow_vars = ["count", "n_parent", "n_total", "threshold", "median_positive", "concentration_per_ml"]
    xr.testing.assert_equal(ds[flow_vars], ref[flow_vars])
    diff = np.abs(ds["image_count"].values - ref["image_count"].values)
    assert diff.max() <= 2, diff


@pytest.mark.gpu
def test_local_cuda_cluster_identical(demo_run, tmp_path):
    pytest.importorskip("dask_cuda")
    from evflow import run

    src, _ = demo_run
    ref = _load(src)
    ds = run(src / "data" / "experiment.toml", output=tmp_path / "out", backend="numpy", scheduler="local-cuda",
             quiet=True)
    _same(ds, ref)
