"""Copies per vesicle through the pipeline: bleaching movies -> unit brightness -> antibodies per vesicle,
and flow MESF -> the same scale, on a synthetic experiment with known truth."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import tifffile

import evflow
from evflow.errors import ConfigError
from evflow.pipeline.config_bleaching import bleaching_acquisitions

UNIT = 400.0  # photons per dye per frame at the movie's 50 ms exposure
DOL = 2.0  # dyes per antibody
ANTIBODIES = 6  # per vesicle in the still images (100 ms exposure)
MESF_PER_DYE, MESF_POS = 1.5, 3000.0  # flow: MESF one dye is worth, median MESF of CD63+ events
M, B = 1.05, 2.5
MESF_VALUES = [0, 792, 2079, 6588, 16471, 47497, 137049, 271647]


def _experiment(tmp_path, *, flow=True):
    from evflow.io.fcs import write_fcs
    from evflow.synth import bleaching_movie, synthetic_ev_sample, synthetic_mesf_beads, tirf

    (tmp_path / "img").mkdir()
    truth = {}
    for j in range(2):  # two bleaching movies of CD63, 14 vesicles each
        mov, _yx, t = bleaching_movie((96, 96), [1, 2, 3, 1, 2, 1, 3, 2, 1, 1, 2, 1, 3, 1], n_frames=300,
                                      unit_photons=UNIT, seed=10 + j)
        tifffile.imwrite(tmp_path / "img" / f"bleach{j}.tif", mov.astype(np.uint16), imagej=True,
                         metadata={"axes": "TYX", "finterval": 0.05})
    photons = ANTIBODIES * DOL * UNIT * 2.0  # twice the exposure of the movie
    for f in range(2):
        s = tirf((128, 128), markers=["CD63"], n_vesicles=30, photons=photons, photons_cv=0, background=5,
                 camera="ideal", chromatic_shift=False, edge_margin_px=8, seed=40 + f)
        tifffile.imwrite(tmp_path / "img" / f"S1_f{f}.tif", np.asarray(s.images.values[0], np.float32))
    settings = {
        "imaging": {"channels": ["CD63"], "psf_sigma_px": 1.3},
        "samples": [{"name": "S1", "images": ["img/S1_f0.tif", "img/S1_f1.tif"],
                     "bleaching": [{"files": ["img/bleach0.tif", "img/bleach1.tif"], "marker": "CD63",
                                    "exposure_ms": 50.0, "image_exposure_ms": 100.0, "dye_per_antibody": DOL}]}],
    }
    if flow:
        (tmp_path / "flow").mkdir()
        beads = synthetic_mesf_beads(MESF_VALUES, n_per_peak=600, m=M, b=B, seed=1)
        beads = beads.rename(columns={"FSC": "FSC-H", "SSC": "SSC-H", "FL1": "FL1-H", "FL3": "FL3-H"})
        write_fcs(tmp_path / "flow" / "beads.fcs", beads.to_numpy(), list(beads.columns))
        ev, t = synthetic_ev_sample(20000, markers=[("FL1-H", "CD63", 0.5, MESF_POS)], m=M, b=B, background=1.0,
                                    seed=3)
        write_fcs(tmp_path / "flow" / "S1.fcs", ev.to_numpy(), list(ev.columns))
        truth["flow_copies"] = float(np.median(t["mesf_CD63"][t["CD63"]])) / MESF_PER_DYE / DOL
        settings["flow"] = {"markers": {"FL1-H": "CD63"},
                            "calibration": {"fluorescence": {"file": "flow/beads.fcs", "channel": "FL1-H",
                                                             "values": MESF_VALUES}},
                            "copies": {"mesf_per_fluorophore": {"CD63": MESF_PER_DYE},
                                       "dye_per_antibody": {"CD63": DOL}}}
        settings["thresholds"] = {"rule": "fixed", "values": {"CD63": 50.0}}
        settings["samples"][0].update(flow="flow/S1.fcs", volume_ul=1.0)
    truth["unit"] = UNIT
    return settings, truth


def _write(tmp_path, settings):
    import yaml

    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("copies")
    settings, truth = _experiment(tmp)
    ds = evflow.run(_write(tmp, settings), output=tmp / "out", quiet=True, scheduler="sync")
    return tmp, ds, truth


def test_unit_brightness_and_copies_per_vesicle_match_truth(result):
    tmp, ds, truth = result
    unit = float(ds["unit_photons"].sel(copies_marker="CD63"))
    assert unit == pytest.approx(UNIT, rel=0.05)
    assert ds["unit_photons_lo"].item() < unit < ds["unit_photons_hi"].item()
    assert int(ds["unit_n_steps"].item()) >= 20
    img = ds["copies_median"].sel(modality="imaging", copies_sample="S1", copies_phenotype="CD63+", copies_marker="CD63")
    assert float(img) == pytest.approx(ANTIBODIES, rel=0.05)
    lo, hi = (float(ds[v].sel(modality="imaging", copies_sample="S1", copies_phenotype="CD63+").item())
              for v in ("copies_lo", "copies_hi"))
    assert lo < float(img) < hi
    assert int(ds["copies_n"].sel(modality="imaging", copies_sample="S1", copies_phenotype="CD63+").item()) >= 50
    # per-vesicle table: fluorophores and antibodies per vesicle
    spots = pd.read_csv(tmp / "out" / "spots.csv")
    assert np.median(spots["fluorophores_CD63"]) == pytest.approx(ANTIBODIES * DOL, rel=0.05)
    assert np.median(spots["antibodies_CD63"]) == pytest.approx(ANTIBODIES, rel=0.05)


def test_flow_on_the_same_scale_side_by_side(result):
    tmp, ds, truth = result
    fl = float(ds["copies_median"].sel(modality="flow", copies_sample="S1", copies_phenotype="CD63+",
                                       copies_marker="CD63"))
    assert fl == pytest.approx(truth["flow_copies"], rel=0.05)  # 3000 MESF / 1.5 MESF per dye / 2 dyes per antibody
    hist = ds["copies_hist"].sel(copies_sample="S1", copies_marker="CD63")
    assert hist.sel(modality="flow").sum() > 5000 and hist.sel(modality="imaging").sum() >= 50
    # the histograms peak where the medians are
    centre = np.sqrt(ds["copies_bin_lo"].values * ds["copies_bin_hi"].values)
    for md, expect in (("flow", truth["flow_copies"]), ("imaging", ANTIBODIES)):
        peak = centre[int(np.argmax(hist.sel(modality=md).values))]
        assert abs(math.log(peak / expect)) < math.log(1.6)
    # written out: the zarr store holds the variables, the report has the histograms
    import xarray as xr

    stored = xr.open_zarr(tmp / "out" / "results.zarr")
    assert float(stored["copies_median"].sel(modality="flow", copies_sample="S1", copies_phenotype="CD63+",
                                             copies_marker="CD63")) == pytest.approx(fl)
    html = (tmp / "out" / "report.html").read_text()
    assert "Copies per vesicle" in html


def test_rerun_reuses_the_bleaching_items(result):
    tmp, ds, _ = result
    again = evflow.run(tmp / "experiment.yaml", output=tmp / "out", quiet=True, scheduler="sync")
    t = json.loads(again.attrs["_timings"])
    assert t["computed_items"] == 0
    np.testing.assert_allclose(again["unit_photons"].values, ds["unit_photons"].values)


def test_bleaching_settings_are_checked(tmp_path):
    settings, _ = _experiment(tmp_path, flow=False)
    exp = evflow.load_experiment(_write(tmp_path, settings))
    (a,) = bleaching_acquisitions(exp)
    assert a.marker == "CD63" and a.exposure_ratio == 2.0 and len(a.files) == 2 and a.files[0].is_file()
    b = settings["samples"][0]["bleaching"][0]
    bad = dict(b, marker="CD81", files=["img/missing.tif"], frames=5, colour="red")
    settings["samples"][0]["bleaching"] = [bad, dict(b, dye_per_antibody=3.0)]
    settings["flow"] = {"markers": {"FL1-H": "CD63"}, "copies": {"mesf_per_fluorophore": {"CD9": 1.0}}}
    with pytest.raises(ConfigError) as e:
        evflow.load_experiment(_write(tmp_path, settings), check_files=True)
    msg = str(e.value)
    for part in ("'samples[0].bleaching[0].marker' 'CD81' is not one of 'imaging.channels'",
                 "'samples[0].bleaching[0].files[0]' file 'img/missing.tif' not found",
                 "'samples[0].bleaching[0].frames' is 5", "unknown key 'samples[0].bleaching[0].colour'",
                 "'flow.copies.mesf_per_fluorophore.CD9'"):
        assert part in msg
    settings["samples"][0]["bleaching"] = [b, dict(b, dye_per_antibody=3.0)]
    settings.pop("flow")
    with pytest.raises(ConfigError, match="one marker needs one unit brightness"):
        evflow.load_experiment(_write(tmp_path, settings))


def test_a_movie_without_single_steps_is_a_failure_not_a_crash(tmp_path):
    settings, _ = _experiment(tmp_path, flow=False)
    blank = np.random.default_rng(0).poisson(10.0, (60, 64, 64)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img" / "blank.tif", blank, imagej=True, metadata={"axes": "TYX", "finterval": 0.05})
    settings["samples"][0]["bleaching"][0]["files"] = ["img/blank.tif"]
    ds = evflow.run(_write(tmp_path, settings), output=tmp_path / "out", quiet=True, scheduler="sync")
    assert "unit brightness CD63" in json.loads(ds.attrs["failed"])
    assert "copies_median" not in ds and "image_count" in ds
