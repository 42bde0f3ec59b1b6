"""Tiles with overlap: the same spots as the whole-field run, each kept once."""

import pandas as pd
import pytest

import evflow
from evflow import synth
from evflow.errors import ConfigError


@pytest.fixture(scope="module")
def field():
    s = synth.tirf((300, 260), markers=["A"], n_vesicles=260, peak_snr=6, photons_cv=0.2, camera="scmos",
                   chromatic_shift=False, seed=11)
    return s.images.values[0, 0], s.camera()


@pytest.mark.parametrize("tile", [32, 100, 1000])
def test_tiles_give_the_whole_field_spots(field, tile):
    img, cam = field
    a = evflow.detect_spots(img, psf_sigma_px=1.3, camera=cam)
    b = evflow.detect_spots(img, psf_sigma_px=1.3, camera=cam, tile=tile)
    assert len(a) > 200
    pd.testing.assert_frame_equal(a, b)
    assert a.attrs["noise"] == b.attrs["noise"] and b.attrs["n_tiles"] == -(-300 // tile) * -(-260 // tile)
    # spots whose maxima sit on core borders are kept once, by one tile
    on_edge = ((a.y_peak % tile) <= 1) | ((a.y_peak % tile) >= tile - 2) | ((a.x_peak % tile) <= 1)
    if tile < 300:
        assert on_edge.sum() >= 3
    assert not b.duplicated(["y_peak", "x_peak"]).any()


def test_tiles_of_a_dask_mosaic_with_options(field):
    da = pytest.importorskip("dask.array")
    img, cam = field
    kw = dict(psf_sigma_px=[1.0, 1.6], camera=cam, exclude_border_px=5)
    a = evflow.detect_spots(img, **kw)
    b = evflow.detect_spots(da.from_array(img, chunks=(128, 128)), tile=64, **kw)
    pd.testing.assert_frame_equal(a, b)
    c = evflow.detect_spots(img, psf_sigma_px=1.3, camera=cam, threshold=40.0, fit=False)
    d = evflow.detect_spots(img, psf_sigma_px=1.3, camera=cam, threshold=40.0, fit=False, tile=48)
    pd.testing.assert_frame_equal(c, d)
    assert (a.y_peak >= 5).all() and (a.x_peak <= 260 - 6).all()


@pytest.mark.parametrize("tile", [0, 16, 1.5, True, "64"])
def test_bad_tile_sizes(field, tile):
    with pytest.raises(ConfigError, match="tile"):
        evflow.detect_spots(field[0], psf_sigma_px=1.3, tile=tile)


@pytest.mark.parametrize("damage", ["block", "stuck pixels", "dense stuck pixels", "dense on one side"])
def test_tiles_give_the_whole_field_spots_near_saturation(field, damage):
    """Saturated pixels exclude the filter's reach from the noise samples unless that leaves under a quarter
    of the field: a field-level choice, which the tiles make from all their cores as the whole field does."""
    import numpy as np

    img, cam = field
    a = np.array(img, dtype=np.float64)
    rng = np.random.default_rng(3)
    if damage == "block":
        a[40:80, 100:140] = 65535.0
    else:  # 0.2 % of the pixels leave most of the field to sample; 2 % leave less than a quarter; 2 % on one
        # side leave the other (the tiles there alone would choose differently from those on the damaged side)
        stuck = rng.random(a.shape) < (0.002 if damage == "stuck pixels" else 0.02)
        if damage == "dense on one side":
            stuck[:, 130:] = False
        a[stuck] = 65535.0
    w = evflow.detect_spots(a, psf_sigma_px=1.3, camera=cam, saturation=65535.0)
    t = evflow.detect_spots(a, psf_sigma_px=1.3, camera=cam, saturation=65535.0, tile=64)
    assert len(w) > (100 if damage != "dense stuck pixels" else 10)
    pd.testing.assert_frame_equal(w, t)
    assert w.attrs["noise"] == t.attrs["noise"]
