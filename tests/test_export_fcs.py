"""Calibrated events out: FCS files with MESF, diameter, gate and phenotype channels, read back by FlowIO."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

import evflow
from evflow.cli import main
from evflow.errors import FCSError
from evflow.flow.calibration import calibrate_scatter
from evflow.flow.export import export_fcs
from evflow.synth.flow import synthetic_size_beads

flowio = pytest.importorskip("flowio")

MEFL_A = [0, 792, 2079, 6588, 16471, 47497, 137049, 271647]
BEADS_WSP = Path(__file__).parent / "data" / "flowjo" / "flowcal_beads.wsp"
MARKERS = {"FL1 bright": ("FL1", 13.0), "FL3 bright": ("FL3", 6.0)}


@pytest.fixture(scope="module")
def mefl():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FlowCal's beads: one peak a little off the curve (a CalibrationWarning)
        return evflow.calibrate_mesf(shared_path("beads", "flowcal", "sample001.fcs"), "FL1", MEFL_A,
                                     clustering_channels=["FL1", "FL3"], scatter_channels=["FSC", "SSC"],
                                     units="MEFL")


def _read_back(path):
    f = flowio.FlowData(str(path))
    return f, f.as_array(preprocess=False).astype(np.float64)


def test_cells_with_mefl_gates_and_phenotypes(tmp_path, mefl):
    """FlowCal's real cell sample, calibrated on its beads and gated with a FlowJo workspace."""
    path = shared_path("beads", "flowcal", "sample006.fcs")
    sample = evflow.read_fcs(path)
    res = evflow.read_flowjo(BEADS_WSP).apply(sample, backend="numpy")
    out = res.to_fcs(tmp_path / "cells.fcs", mesf=mefl, markers=MARKERS)
    f, ev = _read_back(out)
    n0 = len(sample.channels)
    lin = np.asarray(sample.linear_events(), dtype=np.float64)
    assert f.event_count == sample.n_events == ev.shape[0]
    names = list(f.pnn_labels)
    assert names[:n0] == list(sample.channels)
    assert names[n0:] == ["FL1_MEFL"] + [f"GATE{k}" for k in range(1, len(res.gate_ids) + 1)] + ["phenotype"]
    assert list(f.pns_labels)[n0 + 1:n0 + 1 + len(res.gate_ids)] == res.gate_ids
    # original channels on their linear scale ($PnE 4,1 decoded), float32
    np.testing.assert_allclose(ev[:, :n0], lin.astype(np.float32), rtol=0, atol=0)
    fl1 = lin[:, sample.channels.index("FL1")]
    np.testing.assert_allclose(ev[:, n0], np.asarray(mefl.to_mesf(fl1)), rtol=1e-6)
    assert np.median(ev[:, n0]) > 5 * np.median(fl1)  # cells in MEFL, not channel units
    counts = res.counts()
    for k, gid in enumerate(res.gate_ids):
        col = ev[:, n0 + 1 + k]
        assert set(np.unique(col)) <= {0.0, 1.0}
        np.testing.assert_array_equal(col.astype(bool), np.asarray(res.membership(gid)))
        assert int(col.sum()) == counts[gid]
    assert 0 < counts["Singlets"] < sample.n_events
    want = (lin[:, 3] > 13.0).astype(int) | ((lin[:, 5] > 6.0).astype(int) << 1)
    np.testing.assert_array_equal(ev[:, -1].astype(int), want)
    assert len(np.unique(want)) == 4  # every phenotype occurs: the test tells bits apart
    text = f.text
    for i in range(1, len(names) + 1):
        assert text[f"p{i}e"] == "0,0"
    # the original keywords are kept; the added ones say how each channel was made
    orig = evflow.read_fcs(path).meta
    for key in ("$CYT", "$DATE", "$BTIM", "$FIL"):
        assert text[key[1:].lower()] == orig[key].strip() or text[key[1:].lower()] == orig[key]
    assert text[f"evflow_p{n0 + 1}source"] == "FL1"
    assert "MEFL = sign(x) exp(b) |x|^m" in text[f"evflow_p{n0 + 1}method"]
    assert "sample001.fcs" in text[f"evflow_p{n0 + 1}method"]
    assert text["evflow_scale"] == sample.scale and "decoded with P4E 4" in text["evflow_p4scale"]
    assert text["evflow_phenotype_bits"] == "bit0=FL1 bright:FL1>13; bit1=FL3 bright:FL3>6"
    assert text["evflow_original_par"] == str(n0)
    # evflow reads its own file back with the same values
    back = evflow.read_fcs(out)
    np.testing.assert_array_equal(back.to_numpy().astype(np.float64), ev)


def test_size_channel_from_scatter_calibration(tmp_path):
    beads = synthetic_size_beads((100, 200, 300, 400, 500), 800, cv=0.05, seed=0)
    # diameters of the beads themselves (polystyrene), so the synthetic truth is the answer
    cal = calibrate_scatter(beads, "SSC-H", [100, 200, 300, 400, 500])
    cal = cal.for_particle(cal.bead_model)
    sample = evflow.read_fcs(evflow.write_fcs(tmp_path / "beads.fcs", beads.to_numpy(), list(beads.columns)))
    out = export_fcs(sample, tmp_path / "sized.fcs", size=cal)
    f, ev = _read_back(out)
    d = ev[:, list(f.pnn_labels).index("diameter_nm")]
    ok = np.isfinite(d)
    assert ok.mean() > 0.99
    # each bead population comes out at its diameter (truth of the synthetic beads)
    peaks = np.sort([np.median(d[ok & (np.abs(d - t) < 50)]) for t in (100, 200, 300, 400, 500)])
    np.testing.assert_allclose(peaks, [100, 200, 300, 400, 500], rtol=0.01)
    assert "Mie scatter model" in f.text[f"evflow_p{len(f.pnn_labels)}method"]


def test_cli_export(tmp_path, capsys):
    cells = shared_path("beads", "flowcal", "sample006.fcs")
    beads = shared_path("beads", "flowcal", "sample001.fcs")
    out = tmp_path / "cli.fcs"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["export", str(cells), "-o", str(out), "--gates", str(BEADS_WSP), "--gate", "Singlets",
                   "--beads", str(beads), "--bead-channel", "FL1", "--bead-values", ",".join(map(str, MEFL_A)),
                   "--bead-units", "MEFL", "--clustering-channels", "FL1,FL3", "--scatter-channels", "FSC,SSC",
                   "--marker", "CD63=FL1:1000"])
    assert rc == 0
    assert "+ 3 added" in capsys.readouterr().out
    f, ev = _read_back(out)
    assert list(f.pnn_labels)[-3:] == ["FL1_MEFL", "GATE1", "phenotype"]
    assert list(f.pns_labels)[-2] == "Singlets"
    assert main(["export", str(cells), "-o", str(out), "--marker", "CD63=FL9:10"]) == 1
    assert "channel 'FL9'" in capsys.readouterr().err
    assert main(["export", str(cells), "-o", str(out), "--marker", "CD63:FL1"]) == 1
    assert "expected NAME=CHANNEL:THRESHOLD" in capsys.readouterr().err


def test_bad_input(tmp_path, mefl):
    path = shared_path("beads", "flowcal", "sample006.fcs")
    sample = evflow.read_fcs(path)
    other = dataclasses.replace(mefl, channel="FITC-A")
    with pytest.raises(FCSError, match=r"the MEFL calibration uses channel 'FITC-A', which .*sample006.fcs does not have"):
        export_fcs(sample, tmp_path / "x.fcs", mesf=other)
    with pytest.raises(FCSError, match=r"marker 'CD9': expected \(channel, threshold\)"):
        export_fcs(sample, tmp_path / "x.fcs", markers={"CD9": "FL1"})
    res = evflow.read_flowjo(BEADS_WSP).apply(evflow.read_fcs(shared_path("beads", "flowcal", "sample015.fcs")))
    assert res.n_events != sample.n_events
    with pytest.raises(FCSError, match=r"the gating results hold \d+ events, .*sample006.fcs has 32224"):
        export_fcs(sample, tmp_path / "x.fcs", gating=res)
    assert not (tmp_path / "x.fcs").exists()


def test_version_3_2_written_or_refused(tmp_path):
    import inspect

    sample = evflow.read_fcs(shared_path("beads", "flowcal", "sample006.fcs"))
    out = tmp_path / "v32.fcs"
    if "version" in inspect.signature(evflow.write_fcs).parameters:
        export_fcs(sample, out, markers={"FL1+": ("FL1", 13.0)}, version="3.2")
        assert out.read_bytes()[:6] == b"FCS3.2"
        assert evflow.read_fcs(out).n_events == sample.n_events
    else:
        with pytest.raises(FCSError, match=r"version '3.2': this evflow writes FCS 3.1 only"):
            export_fcs(sample, out, version="3.2")
        assert not out.exists()
