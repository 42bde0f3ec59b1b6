"""The imaging report: tables that carry the dataset's numbers (vesicles, density and phenotype fractions with
their intervals, per sample and per field) and agree with the per-vesicle table, photon histograms per marker,
every field in the gallery (in pages), the detection parameters in the provenance; and the between-field
dispersion statistic behind the "fields differ" flag, against scipy and simulated counting noise."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency, norm
from test_report_flow import _by_header, _parse

import evflow
from evflow.flow.intervals import binomial_dispersion
from evflow.pipeline.report_imaging import GALLERY_PAGE

N_FIELDS = 5  # per sample: 4 samples x 5 = 20 fields, two gallery pages
SHAPE = (128, 128)


@pytest.fixture(scope="module")
def imaging_run(tmp_path_factory):
    """The demo's imaging part alone (S1-S3 and the isotype control, 5 fields each), run once."""
    from evflow.pipeline.demo import build_demo

    out = tmp_path_factory.mktemp("imgreport")
    p = build_demo(out, n_events=500, n_fields=N_FIELDS, field_shape=SHAPE)
    text = p.read_text()
    imaging = re.search(r"\n\[imaging\][\s\S]*?(?=\n\[\[samples\]\])", text).group(0)
    lines = ['[experiment]\nname = "imaging report"\n', imaging]
    for s in tomllib.loads(text)["samples"]:
        if s.get("images"):
            lines.append(f'\n[[samples]]\nname = "{s["name"]}"\nrole = "{s["role"]}"\nimages = '
                         + "[" + ", ".join(f'"{x}"' for x in s["images"]) + "]\n")
    exp = out / "imaging_only.toml"
    exp.write_text("\n".join(lines))
    ds = evflow.run(exp, output=out / "res", quiet=True)
    spots = pd.read_csv(out / "res" / "spots.csv")
    return exp, out / "res", ds, spots


def _wilson(k, n, conf=0.95):
    z = norm.ppf(0.5 + conf / 2)
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(c - h, 0.0), min(c + h, 1.0)


def _lohi(cell):
    lo, hi = cell.split(" - ")
    return float(lo), float(hi)


def test_sample_table_counts_the_vesicles_of_the_spot_table(imaging_run):
    _exp, res, ds, spots = imaging_run
    rows = _by_header(_parse(res / "report.html").tables["image-samples"])
    assert [r["sample"] for r in rows] == ["S1", "S2", "S3", "isotype"]
    area_field = SHAPE[0] * SHAPE[1] * 0.108 ** 2  # um^2 at 108 nm pixels
    from scipy.stats import chi2

    for r in rows:
        n = int((spots["sample"] == r["sample"]).sum())
        assert int(r["fields"]) == N_FIELDS and int(r["vesicles"]) == n > 0
        assert float(r["area (um^2)"]) == pytest.approx(N_FIELDS * area_field, rel=1e-3)
        assert float(r["vesicles/um^2"]) == pytest.approx(n / (N_FIELDS * area_field), rel=1e-3)
        lo, hi = _lohi(r["95% interval (Poisson)"])
        assert lo == pytest.approx(chi2.ppf(0.025, 2 * n) / 2 / (N_FIELDS * area_field), rel=1e-3)
        assert hi == pytest.approx(chi2.ppf(0.975, 2 * n + 2) / 2 / (N_FIELDS * area_field), rel=1e-3)
    assert ds["image_density_all_fov_per_um2"].attrs["units"] == "1/um2"


def test_phenotype_table_fractions_and_intervals(imaging_run):
    _exp, res, ds, spots = imaging_run
    rows = _by_header(_parse(res / "report.html").tables["image-phenotypes"])
    labels = [str(p) for p in ds["image_phenotype"].values]
    assert len(rows) == 4 * len(labels)
    for r in rows:
        sel = spots["sample"] == r["sample"]
        k, n = int((spots.loc[sel, "phenotype"] == r["phenotype"]).sum()), int(sel.sum())
        assert int(r["vesicles"]) == k
        assert float(r["fraction"]) == pytest.approx(k / n, abs=5e-5)
        lo, hi = _lohi(r["95% interval (Wilson)"])
        wlo, whi = _wilson(k, n)
        assert lo == pytest.approx(wlo, abs=6e-5) and hi == pytest.approx(whi, abs=6e-5)
        i, j = list(ds["image_sample"].values).index(r["sample"]), labels.index(r["phenotype"])
        phi = float(ds["image_fraction_dispersion"].values[i, j])
        assert (r["between-field dispersion"] == "") == (not np.isfinite(phi))
        assert (r["flag"] != "") == bool(ds["image_fraction_fields_differ"].values[i, j])
    # the demo's fields are drawn alike: no fraction is flagged, and the dispersion factors scatter about 1
    phi = ds["image_fraction_dispersion"].values
    assert not ds["image_fraction_fields_differ"].values.any()
    assert 0.5 < np.nanmedian(phi) < 1.6


def test_field_table_and_gallery_hold_every_field(imaging_run):
    _exp, res, ds, spots = imaging_run
    page = _parse(res / "report.html")
    rows = _by_header(page.tables["image-fields"])
    labels = [str(p) for p in ds["image_phenotype"].values]
    keys = {(r["sample"], int(r["fov"])) for r in rows}
    assert len(rows) == len(keys) == 4 * N_FIELDS
    for r in rows:
        sel = (spots["sample"] == r["sample"]) & (spots["fov"] == int(r["fov"]))
        assert int(r["vesicles"]) == int(sel.sum())
        for lab in labels:
            assert int(r[lab]) == int((spots.loc[sel, "phenotype"] == lab).sum()), (r["sample"], r["fov"], lab)
    # the gallery: every field on exactly one page, pages in order, only the first one open
    html = (res / "report.html").read_text()
    alts = [a for a in page.alts if a.startswith("fields ")]
    n_pages = math.ceil(4 * N_FIELDS / GALLERY_PAGE)
    assert len(alts) == n_pages == 2
    named = [tuple(x.rsplit(" ", 1)) for a in alts for x in a.split(": ", 1)[1].split(", ")]
    assert sorted((s, int(f)) for s, f in named) == sorted(keys) and len(named) == len(keys)
    gallery = html[html.index("id='image-gallery'"):]
    assert gallery.count("class='gallery-page'") == n_pages
    assert gallery.index("gallery-page") < gallery.index("<details>")  # page 1 shown, the rest collapsed
    assert "Imaging: photons per marker" in html and "photons per marker" in page.alts


def test_detection_parameters_in_the_provenance(imaging_run):
    import inspect

    from evflow.imaging.detect import detect_spots
    from evflow.pipeline.imaging import detection_provenance

    exp, res, _ds, _spots = imaging_run
    rows = {r["parameter"]: r for r in _by_header(_parse(res / "report.html").tables["image-detection"])}
    assert rows["psf_sigma_px"]["value"] == "1.3" and rows["psf_sigma_px"]["from"] == "experiment file"
    assert rows["false_positives"]["value"] == "0.1" and rows["false_positives"]["from"] == "pipeline"
    assert rows["threshold_rule"]["value"] == "adaptive" and rows["threshold_rule"]["from"] == "default"
    assert rows["pixel_size_nm"]["value"] == "108.0" and rows["backend"]["value"] == "numpy"
    assert '"gain": 2.0' in rows["camera"]["value"] and '"offset": 100.0' in rows["camera"]["value"]
    # every parameter of detect_spots is listed, so one added later cannot go unreported
    want = set(inspect.signature(detect_spots).parameters) - {"image", "impl", "flat"}
    assert want <= set(rows)
    # a setting of the experiment file shows as such, with its value
    img_s = tomllib.loads(Path(exp).read_text())["imaging"] | {"noise_model": "global", "hot_pixels": "keep",
                                                              "detection_threshold_photons": 55.0}
    det = detection_provenance(img_s, "numpy")
    assert det["noise"] == {"value": "global", "source": "experiment file"}
    assert det["hot_pixels"] == {"value": "keep", "source": "experiment file"}
    assert det["threshold"] == {"value": 55.0, "source": "experiment file"}


# =========================================================================== the between-field dispersion statistic


def test_dispersion_equals_pearson_chi_square_of_the_fields_table():
    rng = np.random.default_rng(1)
    n = rng.integers(20, 400, size=9)
    k = rng.binomial(n, 0.3)
    phi, p, df = binomial_dispersion(k, n)
    x2, pv, dof, _ = chi2_contingency(np.stack([k, n - k]), correction=False)
    assert df == dof == 8
    assert phi == pytest.approx(x2 / dof, rel=1e-12) and p == pytest.approx(pv, rel=1e-10)
    # fields without vesicles are left out; fewer than two fields, or p at 0 or 1: nothing to test
    phi2, p2, df2 = binomial_dispersion(np.append(k, 0), np.append(n, 0))
    assert (phi2, p2, df2) == (phi, p, df)
    for kk, nn in (([3], [10]), ([0, 0, 0], [10, 20, 5]), ([10, 20], [10, 20])):
        assert np.isnan(binomial_dispersion(kk, nn)[0])


def test_dispersion_p_value_is_calibrated_and_catches_overdispersion():
    """Under counting noise alone (binomial fields) p < 0.05 in about 5 % of chips; with field-to-field spread
    of the true fraction (beta-binomial, sd 0.05 about 0.3, several times the counting sd of about 0.025) the
    dispersion factor is several times 1 and the flag's p < 0.001 catches most chips (85 % here)."""
    rng = np.random.default_rng(7)
    n = rng.integers(100, 600, size=(4000, 12))
    _phi, p, _df = binomial_dispersion(rng.binomial(n, 0.3), n, axis=1)
    assert abs(np.mean(p < 0.05) - 0.05) < 0.012  # 4000 chips: 3.4 standard errors
    assert abs(np.mean(p < 0.001) - 0.001) < 0.002
    a = 0.3 * (0.3 * 0.7 / 0.05 ** 2 - 1)
    b = a * 0.7 / 0.3
    phi, p, _df = binomial_dispersion(rng.binomial(n[:500], rng.beta(a, b, size=(500, 12))), n[:500], axis=1)
    assert np.mean(p < 1e-3) > 0.75 and np.median(phi) > 3
