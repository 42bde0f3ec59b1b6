"""steps.cu executed on the CPU (tests/cuda_cpu) against the NumPy reference of binary segmentation.

The CUDA source is the one evflow.kernels hands to NVRTC, compiled with g++
under a CPU implementation of the CUDA execution model and launched with the
Launch that kernels/launch.py builds for the CuPy path.  log() is glibc's on
both sides here, so change points and counts must agree exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_cpu import runner

from evflow.kernels import launch as L
from evflow.kernels.steps import _best_split_numpy, _sums_numpy, binseg_numba, binseg_numpy
from evflow.kernels.steps_cupy import steps_inputs
from evflow.synth import bleaching_traces

pytestmark = pytest.mark.cuda_cpu

ALL_KERNELS = tuple(f"binseg_steps<{t}>" for t in L.CUDA_TYPES.values())
REALISTIC = dict(unit_photons=200.0, background_photons=300.0, excess_noise=np.sqrt(2), read_noise_photons=5.0,
                 brightness_cv=0.1, blink_off_rate=0.0005, blink_on_rate=0.3)
A, G = 25.0 + 2 * 300.0, 2.0  # the noise model of REALISTIC (variance of the background plus shot noise)


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    runner.require_gxx()
    launch = L.steps_launch(np, np.zeros((0, 4)), np.zeros(0), np.zeros(0), 1.0, 2, 4, n_sm=1)
    runner.build(launch.source(), launch.options, ALL_KERNELS)  # every instantiation in one g++ run


def binseg_cpu(traces, a, g, pen, ms=2, max_cp=64, *, n_sm=1, block=L.STEPS_BLOCK, sanitize=None):
    """binseg_cupy with steps.cu executed on the CPU (outputs and scratch inside guard bytes)."""
    x, a, g = steps_inputs(np, traces, a, g)
    xp = runner.GuardedNumpy()
    launch = L.steps_launch(xp, x, a, g, pen, ms, max_cp, n_sm=n_sm, block=block)
    if x.shape[0]:
        runner.run(launch, kernels=ALL_KERNELS if sanitize is None else None, sanitize=sanitize)
    xp.check()
    return launch.arg("cps"), launch.arg("n_cp")


def _assert_same(ref, got):
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0], ref[0])


def _sim(n_traces=24, n_frames=300, seed=3):
    truth = np.arange(n_traces) % 9
    return bleaching_traces(truth, n_frames=n_frames, seed=seed, bleach_time_frames=n_frames / 7, **REALISTIC)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint16, np.int16, np.int32], ids=lambda d: np.dtype(d).name)
def test_simulated_traces_every_input_dtype(dtype):
    sim = _sim()
    x = sim.traces.T  # (traces, frames), a strided view of the (frames, traces) movie
    if np.dtype(dtype).kind in "iu":
        x = np.rint(x + (300.0 if np.dtype(dtype).kind == "u" else 0.0))  # integer photon counts
    x = x.astype(dtype)
    pen = 3 * np.log(x.shape[1])
    ref = binseg_numpy(x.astype(np.float64), A, G, pen)
    assert ref[1].max() >= 6 and (ref[1] == 0).any()
    _assert_same(ref, binseg_cpu(x, A, G, pen))
    _assert_same(ref, binseg_numba(x, A, G, pen))


def test_per_trace_noise_strided_and_grid_stride_loop():
    sim = _sim(n_traces=40, n_frames=200, seed=8)
    rng = np.random.default_rng(1)
    a = A * rng.uniform(0.5, 2.0, 40)
    g = G * rng.uniform(0.0, 2.0, 40)
    pen = 2.5 * np.log(200)
    ref = binseg_numpy(sim.traces.T, a, g, pen, 3, 32)
    # 40 traces on one multiprocessor: 16 blocks, each takes traces i, i + 16, i + 32 (scratch reused)
    launch = L.steps_launch(np, *steps_inputs(np, sim.traces.T, a, g), pen, 3, 32, n_sm=1)
    assert launch.grid == (16, 1, 1) and launch.arg("cs") == 40 and launch.arg("rs") == 1
    _assert_same(ref, binseg_cpu(sim.traces.T, a, g, pen, 3, 32))
    _assert_same(ref, binseg_cpu(np.ascontiguousarray(sim.traces.T), a, g, pen, 3, 32, n_sm=4, block=32))
    rev = binseg_cpu(sim.traces.T[::-1], a[::-1], g[::-1], pen, 3, 32)  # negative strides: copied first
    _assert_same(ref, (rev[0][::-1], rev[1][::-1]))


def test_splits_on_the_segment_length_limits():
    # steps exactly min_size frames from either end, and segments of 2 min_size - 1 and 2 min_size frames
    n, ms = 60, 3
    rows = []
    for first, last in ((ms, n - ms), (ms + 1, n - ms - 1), (2 * ms - 1, n - 2 * ms), (2 * ms, n - 2 * ms + 1)):
        x = np.full(n, 200.0)
        x[:first] = 1000.0
        x[last:] = 0.0
        rows.append(x)
    x = np.array(rows)
    x[:, ms : n - ms] += np.random.default_rng(4).normal(0, 1.0, (len(rows), n - 2 * ms))
    ref = binseg_numpy(x, 4.0, 0.0, 20.0, ms)
    assert ref[0][0, :2].tolist() == [ms, n - ms]  # the first and last frame a split can take
    assert ref[0][3, :2].tolist() == [2 * ms, n - 2 * ms + 1]
    _assert_same(ref, binseg_cpu(x, 4.0, 0.0, 20.0, ms))


def test_gain_exactly_at_the_penalty():
    # a split is made when its gain exceeds the penalty: at the gain itself no split, one ulp below it one
    sim = _sim(n_traces=6, n_frames=150, seed=12)
    x = np.ascontiguousarray(sim.traces.T[[1, 2, 4, 5]])
    gains = []
    for row in x:
        c, s1, s2 = _sums_numpy(row)
        gains.append(_best_split_numpy(s1, s2, c, A, G, 0, row.size, 2)[0])
    for gain, row in zip(gains, x):
        for pen, splits in ((gain, False), (np.nextafter(gain, -np.inf), True)):
            ref = binseg_numpy(row[None], A, G, pen)
            assert (ref[1][0] > 0) == splits
            _assert_same(ref, binseg_cpu(row[None], A, G, pen))


def test_ties_go_to_the_earliest_frame_and_segment():
    # a flat trace with unit variance: every split costs exactly 0, so with a negative penalty every
    # segment is split, always at its first allowed frame (an odd length leaves a different set than
    # the last frame would)
    x = np.full((3, 41), 5.0)
    x[1, :] = 7.0
    x[2, :37] = 5.0
    ref = binseg_numpy(x[:1], 1.0, 0.0, -1.0, 2)
    assert ref[0][0, : ref[1][0]].tolist() == list(range(2, 39, 2))
    _assert_same(binseg_numpy(x, 1.0, 0.0, -1.0, 2), binseg_cpu(x, 1.0, 0.0, -1.0, 2))
    # exactly tied splits at frames 10 and 30 of a symmetric trace (integers, mean 4, no rounding)
    y = np.zeros((1, 40))
    y[0, 10:30] = 8.0
    c, s1, s2 = _sums_numpy(y[0])
    assert _best_split_numpy(s1, s2, c, 1.0, 0.0, 0, 40, 2)[1] == 10  # np.argmin: the first of the two
    for ms in (2, 10):
        _assert_same(binseg_numpy(y, 1.0, 0.0, 50.0, ms, 1), binseg_cpu(y, 1.0, 0.0, 50.0, ms, 1))
        _assert_same(binseg_numpy(y, 1.0, 0.0, 50.0, ms), binseg_cpu(y, 1.0, 0.0, 50.0, ms))


def test_too_many_change_points_and_tiny_traces():
    sim = _sim(n_traces=9, n_frames=300, seed=5)
    x = sim.traces.T
    pen = 3 * np.log(300)
    ref = binseg_numpy(x, A, G, pen, 2, 3)
    assert (ref[1] == -1).sum() >= 3 and (ref[1] >= 0).sum() >= 2
    assert (ref[0][ref[1] == -1] == -1).all()
    _assert_same(ref, binseg_cpu(x, A, G, pen, 2, 3))
    for n in (1, 3, 4, 5):  # shorter than two segments, exactly two, one more
        y = np.arange(n, dtype=np.float64)[None] * 50.0
        _assert_same(binseg_numpy(y, 1.0, 0.0, 0.5, 2), binseg_cpu(y, 1.0, 0.0, 0.5, 2))
    empty = binseg_cpu(np.zeros((0, 10)), A, G, pen)
    assert empty[0].shape == (0, 64) and empty[1].shape == (0,)


def test_launch_shape_and_shared_memory_limit():
    x = np.zeros((1000, 50), np.uint16)
    la = L.steps_launch(np, x, np.zeros(1000), np.zeros(1000), 1.0, 2, 160, n_sm=132)
    assert la.kernel == "binseg_steps<unsigned short>" and la.options == ("--fmad=false",)
    assert la.grid == (1000, 1, 1) and la.block == (L.STEPS_BLOCK, 1, 1)
    assert la.shared_bytes == 16 * L.STEPS_BLOCK + 32 * 162 + 8 and la.arg("s1_all").shape == (1000, 51)
    assert [type(v) for v in la.cupy_args()[1:5]] == [np.int64] * 4 and type(la.cupy_args()[8]) is np.int32
    with pytest.raises(ValueError, match="shared memory"):
        L.steps_launch(np, x, np.zeros(1000), np.zeros(1000), 1.0, 2, 2000, n_sm=1)


@pytest.mark.parametrize("sanitize", ["thread", "address"])
def test_under_sanitizer(sanitize):
    # races inside a block (a missing __syncthreads) and reads/writes past the
    # shared memory, the scratch rows or the outputs are reported by the sanitizers
    sim = _sim(n_traces=3, n_frames=120, seed=6)
    x = sim.traces.T.astype(np.float32)
    pen = 3 * np.log(120)
    ref = binseg_numpy(x.astype(np.float64), A, G, pen)
    assert ref[1].max() >= 1
    _assert_same(ref, binseg_cpu(x, A, G, pen, n_sm=1, sanitize=sanitize))
