"""Calibration results stored as plain dicts (to_dict / from_dict) convert values exactly as the fitted ones."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import shared_path

from evflow.errors import CalibrationError
from evflow.flow.calibration import (
    MESFCalibration,
    ScatterCalibration,
    calibrate_mesf,
    calibrate_scatter,
    fit_scatter_gain,
    size_gate_limits,
)
from evflow.flow.mie import SILICA, CoatedSphere, Detector, Sphere
from evflow.synth.flow import synthetic_size_beads

MEFL_A = [0, 792, 2079, 6588, 16471, 47497, 137049, 271647]


def _through_npz_json(d):
    """Store a dict as a result store does (arrays in an .npz, the rest as JSON) and read it back."""
    arrays = {k: v for k, v in d.items() if isinstance(v, np.ndarray)}
    plain = {k: v for k, v in d.items() if not isinstance(v, np.ndarray)}
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.array(json.dumps(plain)), **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        out = json.loads(str(z["__meta__"]))
        out.update({k: z[k] for k in z.files if k != "__meta__"})
    return out


def _through_json(d):
    """All of it as JSON (arrays as lists)."""
    return json.loads(json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in d.items()}))


def _assert_same_fields(a, b, arrays):
    for k, v in vars(a).items():
        if k in arrays:
            np.testing.assert_array_equal(getattr(b, k), v, err_msg=k)
            assert np.asarray(getattr(b, k)).dtype == np.asarray(v).dtype, k
        else:
            assert getattr(b, k) == v, k


@pytest.fixture(scope="module")
def mesf_cal():
    return calibrate_mesf(shared_path("beads", "flowcal", "sample001.fcs"), "FL1", MEFL_A, ["FL1", "FL3"],
                          units="MEFL")


@pytest.fixture(scope="module")
def size_cal():
    beads = synthetic_size_beads((100, 200, 300, 400, 500), 800, cv=0.05, seed=0)
    return calibrate_scatter(beads, "SSC-H", [100, 200, 300, 400, 500])


@pytest.mark.parametrize("store", [_through_npz_json, _through_json, dict])
def test_mesf_round_trip_flowcal_beads(mesf_cal, store):
    d = mesf_cal.to_dict()
    assert d["type"] == "MESFCalibration" and d["channel"] == "FL1" and d["units"] == "MEFL"
    json.dumps({k: v for k, v in d.items() if not isinstance(v, np.ndarray)})  # the rest is plain JSON
    back = MESFCalibration.from_dict(store(d))
    _assert_same_fields(mesf_cal, back, MESFCalibration._ARRAYS)
    assert back.peak_status == ["used"] * 7 + ["saturated"] and np.isnan(back.peaks[7])
    x = np.concatenate([-np.geomspace(1.0, 1e4, 50), [0.0, np.nan], np.geomspace(1e-2, 1e4, 500)])
    np.testing.assert_array_equal(back.to_mesf(x), mesf_cal.to_mesf(x))
    m = np.geomspace(1.0, 1e6, 200)
    np.testing.assert_array_equal(back.to_channel(m), mesf_cal.to_channel(m))
    assert back.summary() == mesf_cal.summary()


def test_mesf_to_dict_is_a_copy(mesf_cal):
    d = mesf_cal.to_dict()
    d["peak_medians"][:] = 0.0
    d["params"]["m"] = 0.0
    assert mesf_cal.peak_medians[0] > 0 and mesf_cal.params["m"] > 0


@pytest.mark.parametrize("store", [_through_npz_json, _through_json, dict])
def test_scatter_round_trip(size_cal, store):
    d = size_cal.to_dict()
    assert d["type"] == "ScatterCalibration" and d["particle"]["type"] == "CoatedSphere"
    assert d["detector"] == {"type": "Detector", "axis_deg": 90.0, "half_angle_deg": 53.0,
                             "inner_half_angle_deg": 0.0, "azimuth_deg": 90.0, "polarization_deg": None}
    json.dumps({k: v for k, v in d.items() if not isinstance(v, np.ndarray)})
    back = ScatterCalibration.from_dict(store(d))
    _assert_same_fields(size_cal, back, ScatterCalibration._ARRAYS)
    assert back.particle == size_cal.particle and back.detector == size_cal.detector
    s = np.concatenate([[np.nan, -1.0, 0.0], np.geomspace(1.0, 1e7, 2000)])
    ref = size_cal.to_diameter(s)
    assert np.isfinite(ref).sum() > 500  # the test covers the calibrated range
    np.testing.assert_array_equal(back.to_diameter(s), ref)
    np.testing.assert_array_equal(back.diameter_flags(s), size_cal.diameter_flags(s))
    dn = np.linspace(20.0, 1100.0, 300)
    np.testing.assert_array_equal(back.scatter_of(dn), size_cal.scatter_of(dn))
    assert size_gate_limits(back, 100.0, 400.0) == size_gate_limits(size_cal, 100.0, 400.0)
    np.testing.assert_array_equal(back.for_particle(SILICA).to_diameter(s), size_cal.for_particle(SILICA).to_diameter(s))
    assert back.summary() == size_cal.summary()


def test_scatter_round_trip_complex_index_and_other_models():
    cal = fit_scatter_gain([1.0e3, 8.0e3, 3.0e4], [100.0, 200.0, 300.0], bead_model=Sphere(1.59 + 0.001j),
                           particle=CoatedSphere(1.37, 1.46 + 0.002j, 4.0), channel="FSC-H",
                           detector=Detector.forward_scatter(), diameter_range_nm=(40.0, 600.0))
    d = cal.to_dict()
    assert d["bead_model"] == {"type": "Sphere", "refractive_index": {"real": 1.59, "imag": 0.001}}
    back = ScatterCalibration.from_dict(_through_json(d))
    assert back.bead_model == Sphere(1.59 + 0.001j) and back.particle == CoatedSphere(1.37, 1.46 + 0.002j, 4.0)
    assert back.detector == Detector.forward_scatter()
    s = np.geomspace(10.0, 1e6, 500)
    np.testing.assert_array_equal(back.to_diameter(s), cal.to_diameter(s))


def test_from_dict_errors(mesf_cal, size_cal):
    with pytest.raises(CalibrationError, match="holds a 'MESFCalibration', expected 'ScatterCalibration'"):
        ScatterCalibration.from_dict(mesf_cal.to_dict())
    d = size_cal.to_dict()
    del d["gain"]
    with pytest.raises(CalibrationError, match=r"missing key\(s\) \['gain'\]"):
        ScatterCalibration.from_dict(d)
    d = size_cal.to_dict()
    d["particle"] = {"type": "Cube", "side_nm": 3.0}
    with pytest.raises(CalibrationError, match="particle is .*Cube"):
        ScatterCalibration.from_dict(d)
    d = mesf_cal.to_dict()
    d["params"] = {"m": 1.0}
    with pytest.raises(CalibrationError, match="'params' must hold 'm' and 'b'"):
        MESFCalibration.from_dict(d)
    with pytest.raises(CalibrationError, match="expected a dict"):
        MESFCalibration.from_dict([1, 2])


def test_to_dict_refuses_models_it_cannot_store(size_cal):
    class Custom:
        def layers(self, diameter_nm):
            return diameter_nm / 2, 1.4, diameter_nm / 2, 1.4

    import dataclasses

    odd = dataclasses.replace(size_cal, particle=Custom())
    with pytest.raises(CalibrationError, match="particle is a Custom"):
        odd.to_dict()
