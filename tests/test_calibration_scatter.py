"""Mie theory, scatter -> diameter calibration, size gate and concentration."""

from __future__ import annotations

import numpy as np
import pytest

from evflow.errors import CalibrationError
from evflow.flow.calibration import (
    analysed_volume_ul,
    calibrate_scatter,
    concentration_per_ml,
    fit_scatter_gain,
    size_gate,
    size_gate_limits,
)
from evflow.flow.mie import (
    POLYSTYRENE,
    VESICLE,
    CoatedSphere,
    Detector,
    Sphere,
    amplitude_functions,
    collected_cross_section,
    scattering_cross_section,
)
from evflow.synth.flow import (
    default_scatter_gain,
    synthetic_ev_sample,
    synthetic_size_beads,
    write_synthetic_fcs,
)

LAM, NMED = 488.0, 1.333


# ----------------------------------------------------------------------------- Mie


@pytest.mark.parametrize("d", [40.0, 200.0, 900.0])
@pytest.mark.parametrize("n", [1.59, 1.46, 1.59 + 0.01j])
def test_solid_sphere_matches_miepython(d, n):
    mp = pytest.importorskip("miepython")
    x = np.pi * d * NMED / LAM
    m = complex(n) / NMED
    mu = np.linspace(-1, 1, 41)
    s1, s2 = amplitude_functions(Sphere(n), d, LAM, NMED, mu)
    r1, r2 = mp.S1_S2(m.conjugate(), x, mu, norm="wiscombe")  # miepython: n - ik; same |S|
    np.testing.assert_allclose(np.abs(s1) ** 2, np.abs(r1) ** 2, rtol=1e-8)
    np.testing.assert_allclose(np.abs(s2) ** 2, np.abs(r2) ** 2, rtol=1e-8)
    qext, qsca, qback, g = mp.efficiencies_mx(m.conjugate(), x)
    csca = qsca * np.pi * (d / 2) ** 2
    assert scattering_cross_section(Sphere(n), d, LAM, NMED) == pytest.approx(csca, rel=1e-9)
    # a detector covering all directions collects the total scattering cross-section
    full = collected_cross_section(Sphere(n), d, LAM, NMED, Detector(axis_deg=0, half_angle_deg=180))
    assert full == pytest.approx(csca, rel=1e-6)


@pytest.mark.parametrize("d", [30.0, 150.0, 600.0])
def test_coated_sphere_limits(d):
    # same index in core and shell, or no shell: a solid sphere
    det = Detector.side_scatter()
    assert collected_cross_section(CoatedSphere(1.45, 1.45, 5.0), d, LAM, NMED, det) == pytest.approx(
        collected_cross_section(Sphere(1.45), d, LAM, NMED, det), rel=1e-10
    )
    assert collected_cross_section(CoatedSphere(1.40, 1.48, 0.0), d, LAM, NMED, det) == pytest.approx(
        collected_cross_section(Sphere(1.40), d, LAM, NMED, det), rel=1e-10
    )
    # all shell (thickness >= radius): a solid sphere of the shell index
    assert scattering_cross_section(CoatedSphere(1.38, 1.48, d), d, LAM, NMED) == pytest.approx(
        scattering_cross_section(Sphere(1.48), d, LAM, NMED), rel=1e-10
    )


def test_coated_sphere_rayleigh_limit():
    """Small coated sphere: C_sca = k^4 |alpha|^2 / (6 pi) with the coated-sphere polarisability."""
    d, t = 12.0, 3.0
    b = d / 2
    a = b - t
    k = 2 * np.pi * NMED / LAM
    e1, e2 = (1.38 / NMED) ** 2, (1.48 / NMED) ** 2
    f = (a / b) ** 3
    alpha = 4 * np.pi * b**3 * ((e2 - 1) * (e1 + 2 * e2) + f * (e1 - e2) * (1 + 2 * e2)) / (
        (e2 + 2) * (e1 + 2 * e2) + 2 * f * (e2 - 1) * (e1 - e2)
    )
    ref = k**4 * abs(alpha) ** 2 / (6 * np.pi)
    assert scattering_cross_section(CoatedSphere(1.38, 1.48, t), d, LAM, NMED) == pytest.approx(ref, rel=5e-3)
    # a membrane makes a vesicle scatter more than a homogeneous sphere of its lumen index
    assert scattering_cross_section(VESICLE, 100.0, LAM, NMED) > scattering_cross_section(Sphere(1.38), 100.0, LAM, NMED)


def test_polarisation_average_is_unpolarised():
    kw = dict(axis_deg=90.0, half_angle_deg=40.0)
    un = collected_cross_section(POLYSTYRENE, 300.0, LAM, NMED, Detector(**kw))
    px = collected_cross_section(POLYSTYRENE, 300.0, LAM, NMED, Detector(polarization_deg=0.0, **kw))
    py = collected_cross_section(POLYSTYRENE, 300.0, LAM, NMED, Detector(polarization_deg=90.0, **kw))
    assert 0.5 * (px + py) == pytest.approx(un, rel=1e-9)
    assert px != pytest.approx(py, rel=0.05)  # side scatter depends on the polarisation
    with pytest.raises(CalibrationError):
        Detector(half_angle_deg=10, inner_half_angle_deg=20)


# ----------------------------------------------------------------------------- scatter calibration


@pytest.fixture(scope="module")
def size_calibration():
    beads = synthetic_size_beads((100, 200, 300, 400, 500), 800, cv=0.05, seed=0)
    return calibrate_scatter(beads, "SSC-H", [100, 200, 300, 400, 500])


def test_gain_recovered(size_calibration):
    cal = size_calibration
    assert cal.gain == pytest.approx(default_scatter_gain(), rel=0.01)
    assert np.max(np.abs(cal.residuals)) < 0.01
    assert cal.r2 > 0.999
    assert cal.unique_range_nm[0] == pytest.approx(30.0)


def test_synthetic_ev_diameters_within_5_percent(size_calibration):
    ev, truth = synthetic_ev_sample(4000, cv=0.03, seed=5)
    d = size_calibration.to_diameter(ev["SSC-H"].to_numpy())
    rel = d / truth["diameter_nm"] - 1
    assert np.isfinite(d).all()
    assert np.max(np.abs(rel)) < 0.05
    assert np.median(np.abs(rel)) < 0.01
    assert (size_calibration.diameter_flags(ev["SSC-H"].to_numpy()) == 0).all()


def test_silica_beads_and_other_particle_models():
    """Gain fitted on silica beads sizes polystyrene beads of known size."""
    from evflow.flow.mie import SILICA

    beads = synthetic_size_beads((150, 300, 600), 600, bead_model=SILICA, cv=0.04, seed=2)
    cal = calibrate_scatter(beads, "SSC-H", [150, 300, 600], bead_model=SILICA, particle=POLYSTYRENE,
                            diameter_range_nm=(40, 700))
    ps = synthetic_size_beads((120, 250), 300, bead_model=POLYSTYRENE, cv=0.02, seed=3)
    d = cal.to_diameter(ps["SSC-H"].to_numpy())
    assert np.nanmedian(d[:300]) == pytest.approx(np.median(d[:300]), rel=1e-9)
    med = sorted([np.median(d[d < 180]), np.median(d[d > 180])])
    np.testing.assert_allclose(med, [120, 250], rtol=0.02)


def test_to_diameter_lazy_and_chunked(size_calibration):
    import dask.array as da
    import xarray as xr

    ev, _ = synthetic_ev_sample(3001, seed=6)
    s = ev["SSC-H"].to_numpy()
    s[::500] = [1e-6, 1e9, np.nan, -5.0, 0.0, 1e-6, 1e9][: len(s[::500])]
    ref = size_calibration.to_diameter(s)
    flags = size_calibration.diameter_flags(s)
    assert np.isnan(ref[::500]).all()
    assert flags[0] == -1 and flags[500] == 1 and flags[1000] == 2 and flags[1500] == -1
    for chunks in (400, 1000, 3001):
        lazy = size_calibration.to_diameter(da.from_array(s, chunks=chunks))
        assert isinstance(lazy, da.Array)
        np.testing.assert_array_equal(lazy.compute(), ref)
        np.testing.assert_array_equal(size_calibration.diameter_flags(da.from_array(s, chunks=chunks)).compute(), flags)
    out = size_calibration.to_diameter(xr.DataArray(s, dims="event"))
    np.testing.assert_array_equal(out.values, ref)


@pytest.mark.gpu
def test_to_diameter_cupy(size_calibration):
    import cupy
    import dask.array as da

    ev, _ = synthetic_ev_sample(3001, seed=6)
    s = ev["SSC-H"].to_numpy()
    ref = size_calibration.to_diameter(s)
    g = size_calibration.to_diameter(cupy.asarray(s))
    assert isinstance(g, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(g), ref, rtol=1e-10)
    lazy = size_calibration.to_diameter(da.from_array(s, chunks=1000).map_blocks(cupy.asarray))
    np.testing.assert_allclose(cupy.asnumpy(lazy.compute()), ref, rtol=1e-10)
    np.testing.assert_array_equal(cupy.asnumpy(size_calibration.diameter_flags(cupy.asarray(s))),
                                  size_calibration.diameter_flags(s))


def test_non_unique_range_is_flagged():
    """Narrow forward scatter of large polystyrene beads oscillates: diameters beyond the first maximum are not unique."""
    det = Detector.forward_scatter(half_angle_deg=5.0, inner_half_angle_deg=1.0)
    cal = fit_scatter_gain([1000.0], [200.0], bead_model=POLYSTYRENE, particle=POLYSTYRENE, detector=det,
                           diameter_range_nm=(50.0, 3000.0))
    lo, hi = cal.unique_range_nm
    assert lo == pytest.approx(50.0) and hi < 3000.0
    curve = cal.cross_section_grid
    inside = cal.diameter_grid_nm <= hi
    assert np.any(np.diff(curve) < 0)  # the curve oscillates ...
    assert np.all(np.diff(curve[inside]) > 0)  # ... but not inside the unique range
    peak = int(np.argmax(np.diff(curve) < 0))
    assert curve[inside].max() <= curve[peak:].min()  # no larger diameter repeats a value of the range
    d = np.array([100.0, 0.9 * hi, 2900.0])
    s = cal.scatter_of(d)
    out = cal.to_diameter(s)
    np.testing.assert_allclose(out[:2], d[:2], rtol=2e-3)
    assert cal.diameter_flags(s)[2] == 1 or np.isnan(out[2])
    with pytest.raises(CalibrationError, match="uniquely"):
        size_gate_limits(cal, 100.0, 2900.0)


def test_calibrate_scatter_bad_input():
    beads = synthetic_size_beads((100, 200, 300), 600, seed=1)
    with pytest.raises(CalibrationError, match="cannot be resolved"):
        calibrate_scatter(beads, "SSC-H", [100, 200, 300, 400, 500])
    with pytest.raises(CalibrationError, match="Mie model"):
        calibrate_scatter(beads, "SSC-H", [100, 120, 900])
    with pytest.raises(CalibrationError):
        fit_scatter_gain([1.0, -2.0], [100, 200])


def test_size_gate(size_calibration):
    lo, hi = size_gate_limits(size_calibration, 50.0, 200.0)
    assert lo == pytest.approx(size_calibration.scatter_of(50.0))
    assert hi == pytest.approx(size_calibration.scatter_of(200.0))
    ev, truth = synthetic_ev_sample(4000, seed=7)
    s = ev["SSC-H"].to_numpy()
    inside = (s >= lo) & (s <= hi)
    d = truth["diameter_nm"]
    far = (d < 47) | (d > 210)
    near = (d > 53) & (d < 190)
    assert inside[near].all() and not inside[far].any()
    with pytest.raises(CalibrationError):
        size_gate_limits(size_calibration, 200.0, 50.0)
    import evflow.flow.gates as gates
    gate = size_gate(size_calibration, 50.0, 200.0, gate_id="EV 50-200 nm")
    assert isinstance(gate, gates.RectangleGate)
    np.testing.assert_array_equal(np.asarray(gate.contains(s[:, None])), inside & (s < hi))


# ----------------------------------------------------------------------------- concentration


def test_concentration_from_vol_time_and_user(tmp_path):
    import evflow

    frame, _ = synthetic_ev_sample(2000, acquisition_s=120.0, seed=8)
    frame["Time"] = np.linspace(0.0, 120.0, len(frame))
    p1 = write_synthetic_fcs(tmp_path / "vol.fcs", frame, meta={"$VOL": "25000"})
    s1 = evflow.read_fcs(p1, scale=True)
    v = analysed_volume_ul(s1)
    assert v["volume_ul"] == pytest.approx(25.0) and v["method"] == "$VOL"
    p2 = write_synthetic_fcs(tmp_path / "time.fcs", frame)
    s2 = evflow.read_fcs(p2, scale=True)
    v2 = analysed_volume_ul(s2, flow_rate_ul_per_min=3.0)
    assert v2["acquisition_s"] == pytest.approx(120.0, rel=1e-6)
    assert v2["volume_ul"] == pytest.approx(6.0, rel=1e-6)
    assert analysed_volume_ul(s2, volume_ul=10.0)["volume_ul"] == 10.0
    with pytest.raises(CalibrationError, match="volume"):
        analysed_volume_ul(s2)
    # 2000 events in 6 uL of a 10x dilution: 2000 / 0.006 mL * 10
    assert concentration_per_ml(2000, v2["volume_ul"], 10) == pytest.approx(2000 / 0.006 * 10)
    with pytest.raises(CalibrationError):
        concentration_per_ml(10, 0.0)


def test_size_gate_as_parent_in_gating_strategy(size_calibration):
    import evflow.flow.gates as gates
    ev, truth = synthetic_ev_sample(3000, fraction_positive=0.4, mesf_positive=5000, mesf_cv=0.1, seed=9)
    lo, hi = size_gate_limits(size_calibration, 60.0, 200.0)
    strategy = gates.GatingStrategy([
        size_gate(size_calibration, 60.0, 200.0, gate_id="EV"),
        gates.RectangleGate("CD63+", [gates.Dimension("FL1-H")], [200.0], [None], parent="EV"),
    ])
    events = ev[["SSC-H", "FL1-H", "Time"]].to_numpy()
    res = strategy.apply((events, ["SSC-H", "FL1-H", "Time"]), backend="numpy")
    counts = res.counts()
    s = events[:, 0]
    in_size = (s >= lo) & (s < hi)
    assert counts["EV"] == int(in_size.sum())
    assert counts["CD63+"] == int((in_size & (events[:, 1] >= 200.0)).sum())
    d = truth["diameter_nm"]
    # the size gate selects by true diameter up to the 3 % scatter noise (~0.5 % in diameter)
    assert abs(counts["EV"] - int(((d >= 60) & (d < 200)).sum())) <= 0.01 * len(d)
