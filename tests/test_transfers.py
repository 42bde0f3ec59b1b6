"""Host <-> device crossings of the device paths, counted (evflow.backend.count_transfers).

The crossing points (to_device, to_host) record every call on the NumPy backend too, so these CPU runs
count the copies a CuPy run makes through the same code: one per chunk in and one per sample out for
flow, and per field and channel one in and a fixed, small number out for imaging.  The ``gpu`` tests run
the same counts on CuPy, where each recorded crossing is a real copy.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from evflow import backend as B
from evflow.flow.phenotypes import count_phenotypes, density2d

CHANNELS = ["FSC-A", "SSC-A", "CD9", "CD63"]
MARKERS = {"CD9": ("CD9", 120.0), "CD63": ("CD63", 90.0)}


def _events(n, seed):
    rng = np.random.default_rng(seed)
    ev = rng.gamma(2.0, 60.0, size=(n, len(CHANNELS)))
    ev[::7, 2] = 120.0  # exactly on the threshold: not positive
    return ev


def _dask(ev, rows):
    import dask.array as da

    return da.from_array(ev, chunks=(rows, -1))


def test_crossing_points_on_numpy_are_recorded_without_copies():
    a = np.arange(6.0).reshape(2, 3)
    with B.count_transfers() as log:
        d = B.to_device(a, "numpy", what="x")
        h = B.to_host(d * 2, what="y")
        B.to_numpy(h)  # host code: nothing crosses, nothing recorded
    np.testing.assert_array_equal(h, 2 * a)
    assert log.by_label() == {("to_device", "x"): 1, ("to_host", "y"): 1}
    assert [t.copied for t in log.transfers] == [False, False]
    assert [t.nbytes for t in log.transfers] == [48, 48]
    with B.count_transfers() as log2:
        pass
    assert log2.count() == 0  # closed logs record nothing more


def test_crossings_on_worker_threads_are_counted():
    with B.count_transfers() as outer, B.count_transfers() as inner:
        ts = [threading.Thread(target=B.to_device, args=(np.zeros(3), "numpy")) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert outer.to_device == inner.to_device == 4 and outer.to_host == 0


def test_flow_counting_moves_each_chunk_once_and_each_sample_result_once():
    a, b = _events(10_000, 1), _events(7_001, 2)
    samples = {"a": (_dask(a, 1_000), CHANNELS), "b": (_dask(b, 2_000), CHANNELS)}
    with B.count_transfers() as log:
        ds = count_phenotypes(samples, markers=MARKERS, backend="numpy")
    # 10 + 4 chunks in, one packed partial per sample out, nothing else
    assert log.by_label() == {("to_device", "events chunk"): 14, ("to_host", "sample partial"): 2}
    ref = count_phenotypes({"a": (a, CHANNELS), "b": (b, CHANNELS)}, markers=MARKERS, backend="numpy")
    np.testing.assert_array_equal(ds["count"].values, ref["count"].values)
    np.testing.assert_array_equal(ds["median_positive"].values, ref["median_positive"].values)
    want = [[np.sum((x[:, 2] <= 120) & (x[:, 3] <= 90)), np.sum((x[:, 2] > 120) & (x[:, 3] <= 90)),
             np.sum((x[:, 2] <= 120) & (x[:, 3] > 90)), np.sum((x[:, 2] > 120) & (x[:, 3] > 90))] for x in (a, b)]
    np.testing.assert_array_equal(ds["count"].values, want)


def test_density_moves_each_chunk_once_and_the_histogram_once():
    ev = _events(9_000, 3)
    with B.count_transfers() as log:
        d = density2d((_dask(ev, 1_500), CHANNELS), "FSC-A", "SSC-A", bins=16, range=((0, 600), (0, 600)),
                      backend="numpy")
    assert log.by_label() == {("to_device", "events chunk"): 6, ("to_host", "sample partial"): 1}
    inside = (ev[:, 0] >= 0) & (ev[:, 0] < 600) & (ev[:, 1] >= 0) & (ev[:, 1] < 600)
    assert int(d.values.sum()) == int(inside.sum())


def test_partial_to_host_is_one_copy_and_bit_exact():
    from evflow.kernels.phenotype_plan import FINE_NBINS, Partial

    rng = np.random.default_rng(4)
    p = Partial(11, rng.integers(0, 9, 8), rng.integers(0, 5, (3, FINE_NBINS)), rng.normal(size=3) * 1e17,
                rng.integers(0, 3, (4, 5)))
    with B.count_transfers() as log:
        h = p.to_host()
    assert log.by_label() == {("to_host", "partial"): 1}
    assert h.n_events == 11 and h.density.shape == (4, 5)
    for f in ("counts", "pos_hist", "density"):
        np.testing.assert_array_equal(getattr(h, f), getattr(p, f))
    assert h.pos_sum.tobytes() == p.pos_sum.tobytes()
    e = Partial(0, np.zeros(1, np.int64), np.zeros((0, FINE_NBINS), np.int64), np.zeros(0), np.zeros((0, 0), np.int64))
    he = e.to_host()
    assert he.pos_hist.shape == (0, FINE_NBINS) and he.density.shape == (0, 0)


#: what may come back to the host from inside a field's detection (per field and channel)
IMAGING_OUT = {"noise samples", "extrema", "candidate values", "fit results"}


def _imaging_crossings(backend):
    from evflow.imaging.count import count_vesicles
    from evflow.synth.tirf import tirf

    syn = tirf((128, 128), n_fields=2, seed=5)
    markers = list(syn.images.channel.values)
    with B.count_transfers() as log:
        ds, spots = count_vesicles(syn.images, markers=markers, detect_kwargs={"backend": backend})
    return log, ds, spots, len(markers) * 2


def test_imaging_field_crosses_once_in_and_a_few_times_out_per_channel():
    log, ds, spots, n_images = _imaging_crossings("numpy")
    got = log.by_label()
    assert got.pop(("to_device", "field")) == n_images  # each (field, channel) goes to the device once
    assert {w for (d, w) in got} <= IMAGING_OUT and all(d == "to_host" for d, _ in got)
    for w in ("noise samples", "extrema", "candidate values"):
        assert got[("to_host", w)] == n_images, w
    # one fit per PSF scale with candidates, a refit of failed fits at most once more
    assert n_images <= got[("to_host", "fit results")] <= 2 * n_images
    assert len(spots) > 0 and int(ds["count"].sum()) == len(spots)


@pytest.mark.gpu
def test_imaging_on_cupy_makes_the_same_crossings_as_on_numpy():
    ref_log, ref_ds, ref_spots, _ = _imaging_crossings("numpy")
    log, ds, spots, _ = _imaging_crossings("cupy")
    assert log.by_label() == ref_log.by_label()
    assert all(t.copied for t in log.transfers)
    assert len(spots) == len(ref_spots)
    np.testing.assert_array_equal(ds["count"].values, ref_ds["count"].values)


@pytest.mark.gpu
def test_flow_on_cupy_copies_each_chunk_once_and_each_sample_once():
    a = _events(50_000, 6)
    with B.count_transfers() as log:
        ds = count_phenotypes({"a": (_dask(a, 5_000), CHANNELS)}, markers=MARKERS, backend="cupy")
    got = log.by_label()
    assert got.pop(("to_device", "plan"), 0) <= 2  # the packed plan (ints, floats), once per plan and GPU
    assert got == {("to_device", "events chunk"): 10, ("to_host", "sample partial"): 1}
    assert all(t.copied for t in log.transfers)
    ref = count_phenotypes({"a": (a, CHANNELS)}, markers=MARKERS, backend="numpy")
    np.testing.assert_array_equal(ds["count"].values, ref["count"].values)
    np.testing.assert_array_equal(ds["median_positive"].values, ref["median_positive"].values)


@pytest.mark.gpu
def test_to_device_stages_through_pinned_memory_and_round_trips():
    import cupy

    a = np.arange(3 * 1024 * 1024, dtype=np.float32).reshape(-1, 3)[::2]  # not contiguous, larger than 1 MiB
    with B.count_transfers() as log:
        d = B.to_device(a, "cupy")
        assert B.to_device(d, "cupy") is d  # already there: nothing crosses
        h = B.to_host(d)
    assert isinstance(d, cupy.ndarray)
    np.testing.assert_array_equal(h, a)
    assert log.by_label() == {("to_device", "array"): 1, ("to_host", "array"): 1}
