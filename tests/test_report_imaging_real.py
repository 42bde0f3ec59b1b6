"""The imaging pipeline and its report on real images: the deepblink pair (two real channels of one 512x512
field) cut into four 256x256 fields, as one sample and, with its channels swapped, as a second one.

The swapped sample is the same data with the markers' names exchanged, so every number the report gives for
one sample must come back, mirrored, for the other: counts, densities, the c1-only fraction of one as the
c2-only fraction of the other, per field and over the sample, and each channel's QC.  The report's tables
are checked against the per-vesicle table (``spots.csv``) as for the synthetic demo."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import shared_path
from test_report_flow import _by_header, _parse

import evflow
from evflow.pipeline.report_imaging import GALLERY_PAGE

PIXEL_NM = 100.0
HALF = 256


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    c1 = tifffile.imread(shared_path("images", "deepblink", "image_c1.tif"))
    c2 = tifffile.imread(shared_path("images", "deepblink", "image_c2.tif"))
    out = tmp_path_factory.mktemp("realreport")
    (out / "images").mkdir()
    files = {"pair": [], "swapped": []}
    for q, (y, x) in enumerate([(0, 0), (0, HALF), (HALF, 0), (HALF, HALF)]):
        sl = (slice(y, y + HALF), slice(x, x + HALF))
        for name, chans in (("pair", (c1, c2)), ("swapped", (c2, c1))):
            p = out / "images" / f"{name}_q{q}.tif"
            tifffile.imwrite(p, np.stack([chans[0][sl], chans[1][sl]]), metadata={"axes": "CYX"})
            files[name].append(f"images/{p.name}")
    lines = ['[experiment]\nname = "deepblink pair"\n',
             f'[imaging]\nchannels = ["c1", "c2"]\npixel_size_nm = {PIXEL_NM}\npsf_sigma_px = 1.3\n']
    for name, fs in files.items():
        lines.append(f'[[samples]]\nname = "{name}"\nrole = "sample"\nimages = [' + ", ".join(f'"{f}"' for f in fs)
                     + "]\n")
    exp = out / "pair.toml"
    exp.write_text("\n".join(lines))
    ds = evflow.run(exp, output=out / "res", quiet=True)
    spots = pd.read_csv(out / "res" / "spots.csv")
    return out / "res", ds, spots


def _mirror(label):
    """The phenotype label of the swapped sample: c1 and c2 exchanged."""
    return label.replace("c1", "@").replace("c2", "c1").replace("@", "c2")


def _canonical(label):
    return " ".join(sorted(label.split()))


def test_sample_table_on_real_fields(real_run):
    res, _ds, spots = real_run
    rows = {r["sample"]: r for r in _by_header(_parse(res / "report.html").tables["image-samples"])}
    assert sorted(rows) == ["pair", "swapped"]
    area = 4 * HALF * HALF * (PIXEL_NM * 1e-3) ** 2
    for name, r in rows.items():
        n = int((spots["sample"] == name).sum())
        assert int(r["fields"]) == 4 and int(r["vesicles"]) == n > 200  # the pair holds ~256 spots a channel
        assert float(r["vesicles/um^2"]) == pytest.approx(n / area, rel=1e-3)
    assert rows["pair"]["vesicles"] == rows["swapped"]["vesicles"]


def test_phenotype_fractions_mirror_between_the_samples(real_run):
    res, ds, spots = real_run
    rows = _by_header(_parse(res / "report.html").tables["image-phenotypes"])
    by = {(r["sample"], _canonical(r["phenotype"])): r for r in rows}
    seen = 0
    for r in rows:
        if r["sample"] != "pair":
            continue
        sel = spots["sample"] == "pair"
        k = int((spots.loc[sel, "phenotype"] == r["phenotype"]).sum())
        assert int(r["vesicles"]) == k and float(r["fraction"]) == pytest.approx(k / int(sel.sum()), abs=5e-5)
        twin = by[("swapped", _canonical(_mirror(r["phenotype"])))]
        assert (twin["vesicles"], twin["fraction"], twin["95% interval (Wilson)"]) == (
            r["vesicles"], r["fraction"], r["95% interval (Wilson)"]), r["phenotype"]
        seen += 1
    assert seen == len(ds["image_phenotype"])
    # the pair's channels share lattice sites but c2 sits ~4 px off c1 (sd): most vesicles are single-positive
    single = [r for r in rows if r["sample"] == "pair" and r["phenotype"].count("+") == 1]
    assert sum(float(r["fraction"]) for r in single) > 0.8


def test_field_table_gallery_and_qc_on_real_fields(real_run):
    res, ds, spots = real_run
    page = _parse(res / "report.html")
    rows = _by_header(page.tables["image-fields"])
    assert len(rows) == 8
    for r in rows:
        sel = (spots["sample"] == r["sample"]) & (spots["fov"] == int(r["fov"]))
        assert int(r["vesicles"]) == int(sel.sum())
    alts = [a for a in page.alts if a.startswith("fields ")]
    assert len(alts) == math.ceil(8 / GALLERY_PAGE)
    named = sorted(x for a in alts for x in a.split(": ", 1)[1].split(", "))
    assert named == sorted(f"{s} {f}" for s in ("pair", "swapped") for f in range(4))
    # each channel's QC in one sample is the other channel's in the swapped one
    i, j = list(ds["image_sample"].values).index("pair"), list(ds["image_sample"].values).index("swapped")
    for m in ("n_spots", "background", "noise", "threshold", "focus", "spot_width"):
        v = ds[f"image_qc_{m}"].values
        assert np.all(np.isfinite(v[i])), m
        np.testing.assert_allclose(v[i], v[j][:, ::-1], rtol=1e-12, err_msg=m)
    assert np.all(ds["image_qc_spot_width"].values > 0.6)
    assert "spot width" in (res / "report.html").read_text()
