"""count_bleaching_steps: accuracy on simulated traces, real quickpbsa traces, flags, kernel parity."""

import numpy as np
import pytest
from conftest import shared_path

import evflow
from evflow.errors import CalibrationError, ConfigError, EvflowError
from evflow.kernels.steps import binseg_numba, binseg_numpy, changepoints_numba, changepoints_numpy
from evflow.synth import bleaching_traces

# realistic single-molecule TIRF: 200 photons per dye per frame, 300 background photons in the aperture,
# EMCCD excess noise, 5 photons read noise, 10 % dye-to-dye brightness spread, some blinking
REALISTIC = dict(unit_photons=200.0, background_photons=300.0, excess_noise=np.sqrt(2), read_noise_photons=5.0,
                 brightness_cv=0.1, blink_off_rate=0.0005, blink_on_rate=0.3)


@pytest.fixture(scope="module")
def sim_1_to_8():
    truth = np.repeat(np.arange(1, 9), 40)
    sim = bleaching_traces(truth, seed=11, **REALISTIC)
    return sim, evflow.count_bleaching_steps(sim.traces)


def test_accuracy_on_simulated_traces(sim_1_to_8):
    sim, r = sim_1_to_8
    truth = sim.n_fluorophores
    assert r.counted.mean() >= 0.9
    for k in range(1, 9):
        m = (truth == k) & r.counted
        n = r.n_steps[m]
        if k <= 4:
            assert (n == k).mean() >= 0.9, (k, np.bincount(n))
        else:
            assert abs(n.mean() - k) <= 0.1 * k, (k, n.mean())


def test_unit_brightness_within_5_percent(sim_1_to_8):
    sim, r = sim_1_to_8
    u = evflow.unit_brightness(r, channel="A647")
    assert u.photons == pytest.approx(sim.unit_photons, rel=0.05)
    assert u.ci_low < u.photons < u.ci_high
    assert u.n_steps > 100 and u.channel == "A647"
    assert u.to_dict()["photons"] == u.photons


def test_result_table_and_one_trace():
    sim = bleaching_traces([3], seed=0, **REALISTIC)
    r = evflow.count_bleaching_steps(sim.traces[:, 0])  # a 1-D trace
    assert len(r) == 1 and r.n_steps[0] == 3 and r.flag[0] == "ok"
    df = r.to_frame()
    assert list(df.columns[:5]) == ["n_steps", "flag", "confidence", "unit_height", "initial_level"]
    # step frames within a few frames of the true bleaching frames, heights near the unit
    np.testing.assert_allclose(np.sort(df.frames[0]), sim.bleach_frames[0], atol=3)
    np.testing.assert_allclose(df.heights[0], 200.0, rtol=0.35)
    assert 0.5 < df.confidence[0] <= 1.0


def test_zero_dyes_counts_zero():
    sim = bleaching_traces([0, 0], seed=1, **REALISTIC)
    r = evflow.count_bleaching_steps(sim.traces)
    assert r.n_steps.tolist() == [0, 0] and list(r.flag) == ["ok", "ok"]


def test_flags_not_forced():
    rng = np.random.default_rng(3)
    n = 600
    noise = lambda: rng.normal(0, 10, n)  # noqa: E731
    frames = np.arange(n)
    unbleached = 300.0 * (frames < 100) + 300.0 + noise()  # one dye never bleaches
    blinking = 300.0 * ((frames < 100) | ((frames >= 200) & (frames < 300))) + noise()
    jump = 3000.0 * (frames < 200) + noise()  # ten units lost in one frame: a spot leaving, not bleaching
    staircase = sum(300.0 * (frames < t) for t in (50, 120, 200, 260, 330)) + noise()
    X = np.stack([unbleached, blinking, jump, staircase], axis=1)
    r = evflow.count_bleaching_steps(X, unit_height=300.0, max_steps=4)
    assert list(r.flag) == ["no_final_background", "blinking", "large_step", "too_many_steps"]
    assert r.n_steps[[0, 2, 3]].tolist() == [-1, -1, -1]
    assert r.n_steps[1] == 1 and 0 < r.confidence[1] <= 0.5  # blinking is counted (most dyes on at once)
    r2 = evflow.count_bleaching_steps(X, unit_height=300.0, blinking="flag")
    assert r2.n_steps[1] == -1 and r2.n_steps[3] == 5
    assert not r.counted[0] and r2.counted[3]


def test_real_quickpbsa_origami_traces():
    # 17 traces of DNA origami with 9 dye sites (background-subtracted, 1000 frames)
    p = shared_path("bleaching", "quickpbsa", "ExampleStack_difference.csv")
    d = np.genfromtxt(p, delimiter=",", skip_header=2)
    traces = d[:, 6:].T
    assert traces.shape == (1000, 17)
    r = evflow.count_bleaching_steps(traces)
    n = r.n_steps[r.counted]
    assert len(n) >= 14
    assert n.max() <= 9 and n.min() >= 1
    # incomplete labelling: the counts peak below the 9 sites
    assert 5 <= np.median(n) <= 8
    u = evflow.unit_brightness(r)
    assert 250 < u.photons < 400  # photons per dye per frame of these traces


def test_real_quickpbsa_normalised_traces():
    p = shared_path("bleaching", "quickpbsa", "ExampleTrace.txt")
    traces = np.loadtxt(p).T  # three traces normalised to ~1
    r = evflow.count_bleaching_steps(traces)
    assert r.counted.all() and (r.n_steps <= 9).all() and (r.n_steps >= 3).all()


@pytest.mark.parametrize("kind", ["binseg", "pelt"])
def test_numba_kernel_matches_numpy_reference(kind):
    n_frames = 400 if kind == "binseg" else 200
    sim = bleaching_traces(np.arange(0, 9).repeat(3 if kind == "binseg" else 1), n_frames=n_frames, seed=5,
                           bleach_time_frames=n_frames / 7, **REALISTIC)
    x = sim.traces.T
    a = np.full(x.shape[0], 25.0 + 300 * 2)
    g = np.full(x.shape[0], 2.0)
    ref, fast = (binseg_numpy, binseg_numba) if kind == "binseg" else (changepoints_numpy, changepoints_numba)
    c1, n1 = ref(x, a, g, 3 * np.log(n_frames))
    c2, n2 = fast(x, a, g, 3 * np.log(n_frames))
    np.testing.assert_array_equal(n1, n2)
    np.testing.assert_array_equal(c1, c2)
    assert np.corrcoef(n1, sim.n_fluorophores)[0, 1] > 0.9 and n1.max() > 5
    r1 = evflow.count_bleaching_steps(sim.traces, method=kind, impl="numpy")  # the same counts end to end
    r2 = evflow.count_bleaching_steps(sim.traces, method=kind, impl="numba")
    np.testing.assert_array_equal(r1.n_steps, r2.n_steps)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint16])
def test_cuda_kernel_matches_numpy_reference(dtype):
    # steps.cu on a GPU: libdevice's log() is within 1 ulp of glibc's, so a split whose cost ties another's
    # to the last bits may go the other way (kernels/steps_cupy.py); counts must agree exactly
    import cupy

    from evflow.kernels.steps import binseg_cupy

    sim = bleaching_traces(np.arange(0, 9).repeat(40), n_frames=1000, seed=9, **REALISTIC)
    x = sim.traces.T
    if np.dtype(dtype).kind == "u":
        x = np.rint(x + 300.0)
    x = x.astype(dtype)
    a = np.full(x.shape[0], 25.0 + 300 * 2)
    g = np.full(x.shape[0], 2.0)
    pen = 3 * np.log(1000)
    c1, n1 = binseg_numpy(x.astype(np.float64), a, g, pen)
    c2, n2 = binseg_cupy(cupy.asarray(x), a, g, pen)
    assert (n1 == n2).mean() >= 0.99 and (c1 == c2).all(axis=1).mean() >= 0.99
    r1 = evflow.count_bleaching_steps(sim.traces, impl="numpy")
    r2 = evflow.count_bleaching_steps(sim.traces, impl="cupy")
    np.testing.assert_array_equal(r1.n_steps, r2.n_steps)


def test_pelt_and_binseg_agree_on_counts(sim_1_to_8):
    sim, r = sim_1_to_8
    sub = sim.traces[:, ::8]
    rp = evflow.count_bleaching_steps(sub, method="pelt")
    rb = evflow.count_bleaching_steps(sub)
    assert (rp.n_steps == rb.n_steps).mean() >= 0.9


def test_overflowing_trace_is_flagged():
    sim = bleaching_traces([30], seed=2, **REALISTIC)
    r = evflow.count_bleaching_steps(sim.traces, max_steps=3)
    assert r.flag[0] == "too_many_steps" and r.n_steps[0] == -1


def test_bad_input():
    with pytest.raises(EvflowError, match="NaN"):
        evflow.count_bleaching_steps(np.full((100, 2), np.nan))
    with pytest.raises(EvflowError, match="at least 10 frames"):
        evflow.count_bleaching_steps(np.zeros((5, 3)))
    with pytest.raises(ConfigError, match="penalty"):
        evflow.count_bleaching_steps(np.zeros((100, 1)), penalty=0)
    with pytest.raises(ConfigError, match="blinking"):
        evflow.count_bleaching_steps(np.zeros((100, 1)), blinking="drop")
    with pytest.raises(ConfigError, match="unit_height"):
        evflow.count_bleaching_steps(np.zeros((100, 1)), unit_height=-1.0)
    with pytest.raises(ConfigError, match="method"):
        evflow.count_bleaching_steps(np.zeros((100, 1)), method="kv")
    r = evflow.count_bleaching_steps(np.zeros((100, 1)) + np.random.default_rng(0).normal(0, 1, (100, 1)))
    with pytest.raises(CalibrationError, match="no counted trace"):
        evflow.unit_brightness(r)
    with pytest.raises(ConfigError):
        bleaching_traces([-1])
