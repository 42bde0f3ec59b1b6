"""Bead kits as data: the shipped registry, lots, user kits files, calibrate_mesf(kit=) on real beads, the experiment file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import shared_path

import evflow
from evflow import CalibrationError, ConfigError
from evflow.pipeline import load_experiment

MEFL_A = [0, 792, 2079, 6588, 16471, 47497, 137049, 271647]
MEFL_B = [0, 771, 2106, 6262, 15183, 45292, 136258, 291042]


def test_shipped_kits_listed_with_lots_and_units():
    kits = evflow.list_bead_kits()
    rcp = kits["spherotech-rcp-30-5a"]
    assert rcp["kind"] == "fluorescence"
    assert {"AF02", "AA01", "AK04"} <= set(rcp["lots"])
    assert {"MEFL", "MEPE", "MEAP"} <= set(rcp["units"])
    assert kits["rosetta-calibration"]["kind"] == "size"


def test_lot_values_match_flowcal_documentation():
    k = evflow.bead_kit("rcp-30-5a", "af02")  # alias and lot in any case
    assert k.name == "spherotech-rcp-30-5a" and k.lot == "AF02"
    np.testing.assert_array_equal(k.mesf("MEFL"), MEFL_A)
    np.testing.assert_array_equal(evflow.bead_kit("spherotech-8-peak", "AK04").mesf(), MEFL_B)  # one unit
    # the two published lot sheets differ
    assert not np.array_equal(evflow.bead_kit("rcp-30-5a", "AA01").mesf("MEFL"), MEFL_A)
    r = evflow.bead_kit("rosetta")
    assert r.kind == "size" and r.refractive_index is None and np.all(np.diff(r.diameters_nm) > 0)


@pytest.mark.parametrize("args,words", [
    (("nope",), ["nope", "spherotech-rcp-30-5a", "rosetta-calibration"]),
    (("rcp-30-5a",), ["lot=", "AF02", "AK04"]),
    (("rcp-30-5a", "ZZ99"), ["ZZ99", "AF02"]),
])
def test_unknown_kit_or_lot_lists_the_available(args, words):
    with pytest.raises(CalibrationError) as exc:
        evflow.bead_kit(*args)
    for w in words:
        assert w in str(exc.value)


def test_unit_errors_name_channel_and_units():
    path = shared_path("beads", "flowcal", "sample001.fcs")
    with pytest.raises(CalibrationError) as exc:  # several units, none chosen
        evflow.calibrate_mesf(path, "FL1", kit="rcp-30-5a", lot="AF02")
    assert "FL1" in str(exc.value) and "MEPE" in str(exc.value)
    with pytest.raises(CalibrationError) as exc:
        evflow.calibrate_mesf(path, "FL1", kit="rcp-30-5a", lot="AK04", units="MEPE")
    assert "AK04" in str(exc.value) and "MEFL" in str(exc.value)
    with pytest.raises(CalibrationError, match="not both"):
        evflow.calibrate_mesf(path, "FL1", MEFL_A, kit="rcp-30-5a", lot="AF02")


@pytest.mark.parametrize("name,lot,values", [("sample001.fcs", "AF02", MEFL_A), ("min/sample001.fcs", "AK04", MEFL_B)])
def test_calibrate_mesf_with_a_kit_equals_the_values(name, lot, values):
    path = shared_path("beads", "flowcal", *name.split("/"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = evflow.calibrate_mesf(path, "FL1", values, clustering_channels=["FL1", "FL3"], units="MEFL")
        by_kit = evflow.calibrate_mesf(path, "FL1", kit="rcp-30-5a", lot=lot, units="MEFL",
                                       clustering_channels=["FL1", "FL3"])
        as_obj = evflow.calibrate_mesf(path, "FL1", evflow.bead_kit("rcp-30-5a", lot), units="mefl",
                                       clustering_channels=["FL1", "FL3"])
    assert by_kit.units == as_obj.units == "MEFL"
    for cal in (by_kit, as_obj):
        np.testing.assert_allclose(cal.to_mesf(np.array([10.0, 100.0, 500.0])),
                                   ref.to_mesf(np.array([10.0, 100.0, 500.0])), rtol=1e-12)


USER_KIT = """
[[kits]]
[kits.kit]
name = "lab-beads"
kind = "fluorescence"
populations = 8
[[kits.lot]]
lots = ["L1"]
source = "test"
MEFL = [0, 792, 2079, 6588, 16471, 47497, 137049, 271647]

[[kits]]
[kits.kit]
name = "lab-size"
kind = "size"
[[kits.lot]]
lots = ["S1"]
diameters_nm = [100, 200, 400]
refractive_index = 1.59
"""


def test_user_kits_file_from_env_and_argument(tmp_path, monkeypatch):
    f = tmp_path / "kits.toml"
    f.write_text(USER_KIT)
    assert "lab-beads" not in evflow.list_bead_kits()
    assert "lab-beads" in evflow.list_bead_kits(kits_file=f)
    monkeypatch.setenv("EVFLOW_BEAD_KITS", str(tmp_path))  # a folder works too
    k = evflow.bead_kit("LAB-BEADS")
    np.testing.assert_array_equal(k.mesf(), MEFL_A)
    s = evflow.bead_kit("lab-size", "S1")
    assert s.refractive_index == 1.59 and s.diameters_nm.tolist() == [100, 200, 400]


@pytest.mark.parametrize("text,words", [
    ("[kit]\nkind='fluorescence'\n", ["name"]),
    ("[kit]\nname='x'\n[[lot]]\nlots=['a']\nMEFL=[0, 5, 3]\n", ["MEFL", "increasing"]),
    ("[kit]\nname='x'\nkind='size'\n[[lot]]\nlots=['a']\nsource='s'\n", ["diameters_nm"]),
    ("[kit\nname='x'", ["not valid TOML"]),
])
def test_malformed_kits_file_names_file_and_problem(tmp_path, text, words):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(CalibrationError) as exc:
        evflow.list_bead_kits(kits_file=f)
    assert str(f) in str(exc.value)
    for w in words:
        assert w in str(exc.value)


EXP = """
[flow]
scatter_channel = "SSC"
markers = {{ "FL1" = "CD63" }}
flow_rate_ul_per_min = 1.0
[flow.calibration.fluorescence]
file = "{beads}"
channel = "FL1"
kit = "{kit}"
lot = "{lot}"
units = "MEFL"
clustering_channels = ["FL1", "FL3"]
{beads_section}
[thresholds]
rule = "fixed"
values = {{ CD63 = 100.0 }}
[[samples]]
name = "S"
flow = "{cells}"
"""


def _exp(tmp_path, kit="rcp-30-5a", lot="AF02", beads_section=""):
    p = tmp_path / "exp.toml"
    p.write_text(EXP.format(beads=shared_path("beads", "flowcal", "sample001.fcs"), kit=kit, lot=lot,
                            cells=shared_path("beads", "flowcal", "sample006.fcs"), beads_section=beads_section))
    return p


def test_experiment_kit_fills_values(tmp_path):
    exp = load_experiment(_exp(tmp_path))
    c = exp.flow["calibration"]["fluorescence"]
    assert c["values"] == MEFL_A and c["units"] == "MEFL"


def test_experiment_unknown_kit_or_lot_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_experiment(_exp(tmp_path, lot="ZZ99"))
    msg = str(exc.value)
    assert "flow.calibration.fluorescence.kit" in msg and "ZZ99" in msg and "AF02" in msg and "FL1" in msg


def test_experiment_user_kits_file(tmp_path):
    (tmp_path / "kits.toml").write_text(USER_KIT)
    exp = load_experiment(_exp(tmp_path, kit="lab-beads", lot="L1", beads_section='[beads]\nkits_file = "kits.toml"'))
    assert exp.flow["calibration"]["fluorescence"]["values"] == MEFL_A
