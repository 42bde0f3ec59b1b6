"""The output folder evflow owns: refusal of foreign folders, --force, generations switched as one unit,
the lock, cleaning of temporaries, and one-line CLI errors for unusable folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import evflow
from evflow.errors import OutputError
from evflow.pipeline.outdir import MANIFEST, OutputFolder


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "evflow", *args], capture_output=True, text=True, timeout=300)


def _experiment(tmp_path, threshold=100.0):
    rng = np.random.default_rng(1)
    data = np.column_stack([rng.lognormal(5, 1, 2000), rng.lognormal(4, 1, 2000)]).astype(np.float32)
    evflow.write_fcs(tmp_path / "s.fcs", data, ["SSC-H", "FL1-H"])
    exp = tmp_path / "exp.yaml"
    exp.write_text("experiment: {name: t}\nflow:\n  markers: {FL1-H: CD63}\n"
                   f"thresholds: {{rule: fixed, values: {{CD63: {threshold}}}}}\n"
                   "samples:\n  - {name: s, flow: s.fcs, volume_ul: 2.0}\n")
    return exp


def _one_line_error(r):
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr


def test_foreign_folder_refused_and_untouched(tmp_path):
    exp = _experiment(tmp_path)
    mine = tmp_path / "mine"
    (mine / "results.zarr").mkdir(parents=True)
    (mine / "results.zarr" / "thesis.txt").write_text("years of work")
    (mine / "report.html").write_text("my report")
    err = _one_line_error(_cli("run", str(exp), "--out", str(mine), "-q"))
    assert "not empty" in err and "not created by evflow" in err and "--force" in err
    # --force writes beside a user's files but never replaces one of the same name
    err = _one_line_error(_cli("run", str(exp), "--out", str(mine), "-q", "--force"))
    assert "results.zarr, report.html" in err and "will not replace" in err
    assert (mine / "results.zarr" / "thesis.txt").read_text() == "years of work"
    assert (mine / "report.html").read_text() == "my report"
    assert sorted(p.name for p in (mine / "results.zarr").iterdir()) == ["thesis.txt"]


def test_force_writes_beside_user_files(tmp_path):
    exp = _experiment(tmp_path)
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    ds = evflow.run(exp, output=out, quiet=True, force=True)
    assert int(ds["n_total"].sel(sample="s")) == 2000
    assert (out / "notes.txt").read_text() == "keep"
    m = json.loads((out / MANIFEST).read_text())
    assert "notes.txt" not in m["entries"] and "results.zarr" in m["entries"] and "report.html" in m["entries"]
    evflow.run(exp, output=out, quiet=True)  # now the folder is evflow's: no --force needed
    assert (out / "notes.txt").read_text() == "keep"


def test_outputs_switch_as_one_unit(tmp_path):
    exp = _experiment(tmp_path)
    out = tmp_path / "out"
    evflow.run(exp, output=out, quiet=True)
    first = {n: (out / n).read_bytes() for n in ("counts.csv", "markers.csv", "report.html")}
    for n in ("results.zarr", "counts.csv", "report.html"):
        assert (out / n).is_symlink() and os.readlink(out / n) == f".evflow/current/{n}"
    # a rerun with other settings that dies while writing its outputs: the old complete set stays
    exp2 = _experiment(tmp_path, threshold=50.0)
    import evflow.pipeline.outdir as od

    def die(self, gen):
        assert (gen / "counts.csv").is_file() and (gen / "report.html").is_file()
        raise KeyboardInterrupt  # as if killed just before the switch

    orig = od.OutputFolder.commit
    od.OutputFolder.commit = die
    try:
        with pytest.raises(KeyboardInterrupt):
            evflow.run(exp2, output=out, quiet=True)
    finally:
        od.OutputFolder.commit = orig
    assert {n: (out / n).read_bytes() for n in first} == first
    assert len(list((out / ".evflow" / "generations").iterdir())) == 2  # the unfinished one is left ...
    ds = evflow.run(exp2, output=out, quiet=True)
    assert len(list((out / ".evflow" / "generations").iterdir())) == 1  # ... and cleaned by the next run
    second = {n: (out / n).read_bytes() for n in first}
    assert second["markers.csv"] != first["markers.csv"] and b",50.0," in second["markers.csv"]
    import xarray as xr

    with xr.open_zarr(out / "results.zarr") as z:
        assert float(z["threshold"].values[0, 0]) == 50.0 == float(ds["threshold"].values[0, 0])


def test_lock_names_the_holder(tmp_path):
    exp = _experiment(tmp_path)
    out = tmp_path / "out"
    with OutputFolder(out):
        with pytest.raises(OutputError, match=rf"in use by another evflow run \(pid {os.getpid()} on "):
            OutputFolder(out).__enter__()
        err = _one_line_error(_cli("run", str(exp), "--out", str(out), "-q"))
        assert f"in use by another evflow run (pid {os.getpid()}" in err
    evflow.run(exp, output=out, quiet=True)  # released


def test_temporaries_cleaned_user_files_kept(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out):
        pass
    (out / ".results.abcd1234").mkdir()
    (out / ".results.abcd1234" / "x").write_text("tmp")
    (out / ".counts.csv.k3j4h5g6.tmp").write_text("tmp")
    (out / ".results.txt").write_text("a user's file")
    (out / ".evflow" / "generations" / "old").mkdir(parents=True)
    with OutputFolder(out):
        pass
    assert sorted(p.name for p in out.iterdir()) == [".evflow", ".results.txt"]
    assert not list((out / ".evflow" / "generations").iterdir())


def test_legacy_output_folder_adopted(tmp_path):
    exp = _experiment(tmp_path)
    out = tmp_path / "out"
    (out / ".evflow" / "items").mkdir(parents=True)
    (out / "results.zarr").mkdir()
    (out / "results.zarr" / ".zgroup").write_text("{}")
    (out / "report.html").write_text("old")
    evflow.run(exp, output=out, quiet=True)
    assert (out / "results.zarr").is_symlink() and "evflow report" in (out / "report.html").read_text()


def test_unusable_out_one_line_errors(tmp_path):
    exp = _experiment(tmp_path)
    f = tmp_path / "file"
    f.write_text("x")
    err = _one_line_error(_cli("run", str(exp), "--out", str(f), "-q"))
    assert "is a file, not a folder" in err
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            err = _one_line_error(_cli("run", str(exp), "--out", str(ro / "sub"), "-q"))
            assert "Permission denied" in err and str(ro / "sub") in err
        finally:
            ro.chmod(0o755)


def test_item_write_failure_fails_that_item_only(tmp_path, monkeypatch):
    import errno

    from evflow.pipeline.store import ResultStore

    exp = _experiment(tmp_path)
    long_name = "L" * 300  # longer than a file name may be: the store shortens it
    exp.write_text(exp.read_text().replace(
        "samples:\n  - {name: s, flow: s.fcs, volume_ul: 2.0}\n",
        f"samples:\n  - {{name: s, flow: s.fcs, volume_ul: 2.0}}\n  - {{name: {long_name}, flow: s.fcs, volume_ul: 2.0}}\n"
        "  - {name: full, flow: s.fcs, volume_ul: 2.0}\n"))
    orig = ResultStore.save

    def save(self, kind, name, fp, item):
        if name == "full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path(kind, name)))
        return orig(self, kind, name, fp, item)

    monkeypatch.setattr(ResultStore, "save", save)
    ds = evflow.run(exp, output=tmp_path / "out", quiet=True)
    assert sorted(ds["sample"].values.tolist()) == sorted(["s", long_name])
    failed = json.loads(ds.attrs["failed"])
    assert list(failed) == ["flow full"] and "No space left on device" in failed["flow full"]
    assert "flow-full.npz" in failed["flow full"]
    assert len(ResultStore(tmp_path / "out").path("flow", long_name).name) < 100


def test_sample_name_with_control_characters_refused(tmp_path):
    from evflow.errors import ConfigError

    exp = _experiment(tmp_path)
    exp.write_text(exp.read_text().replace("{name: s,", '{name: "s\\0x",'))
    with pytest.raises(ConfigError, match="not allowed in a file name"):
        evflow.load_experiment(exp)


def test_local_cluster_listens_on_loopback_only():
    pytest.importorskip("distributed")
    from evflow.pipeline.scheduler import scheduler_context

    with scheduler_context("processes", n_workers=1, log=lambda *a: None) as (_s, client):
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        assert all(w.startswith("tcp://127.0.0.1:") for w in client.scheduler_info()["workers"])
