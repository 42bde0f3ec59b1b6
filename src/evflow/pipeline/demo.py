"""``evflow demo``: a synthetic EV experiment with known truth, run through the whole pipeline.

Flow (FCS 3.1 files): MESF beads, size beads, buffer, isotype control,
unstained control, a detergent-treated sample, a dilution series, and three
samples with different tumour-marker (EpCAM) fractions; CD63 on FL1-H
(calibrated in MESF), EpCAM on FL2-H, side scatter for size.
Imaging (TIFF): fields of three channels (CD9, CD63, CD81) per sample, with
a registration-bead image, chromatic shift and an sCMOS camera model; an
isotype chip (vesicles seen in CD9 only) sets the CD63 and CD81 photon
thresholds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["build_demo", "demo", "truth_table"]

MESF_VALUES = [0, 792, 2079, 6588, 16471, 47497, 137049, 271647]
SIZE_BEADS_NM = [100, 200, 300, 400, 500]
GATE_NM = (80.0, 400.0)
FLOW_RATE = 3.0  # uL/min
ACQ_S = 60.0
M, B = 1.05, 2.5  # standard curve of FL1-H (and FL2-H) in the synthetic instrument
IMG_MARKERS = ["CD9", "CD63", "CD81"]


def _ev_frame(n, f_cd63, f_epcam, seed, acq_s=ACQ_S):
    """EVs of known diameter with two independent markers (CD63 on FL1-H, EpCAM on FL2-H); (DataFrame, truth)."""
    from ..synth.flow import synthetic_ev_sample

    df, truth = synthetic_ev_sample(n, median_diameter_nm=110.0, gsd=1.35, diameter_range_nm=(50.0, 400.0), cv=0.03,
                                    mesf_cv=0.3, m=M, b=B, background=5.0, acquisition_s=acq_s, channel="SSC-H",
                                    markers=[("FL1-H", "CD63", f_cd63, 3000.0), ("FL2-H", "EpCAM", f_epcam, 4000.0)],
                                    seed=seed)
    # the acquisition spans exactly acq_s (the analysed volume comes from the Time span)
    t = df["Time"].to_numpy().copy()
    t[0], t[-1] = 0.0, acq_s
    df["Time"] = t
    return df, truth


def _truth_summary(truth, volume_ul, dilution):
    d = truth["diameter_nm"]
    g = (d >= GATE_NM[0]) & (d < GATE_NM[1])
    n = int(g.sum())
    code = truth["CD63"][g].astype(int) | (truth["EpCAM"][g].astype(int) << 1)
    counts = np.bincount(code, minlength=4)
    return {"n_gated": n, "fractions": (counts / max(n, 1)).tolist(),
            "concentration_per_ml": n / (volume_ul * 1e-3) * dilution}


def build_demo(out, *, n_events: int = 200_000, n_fields: int = 2, field_shape=(512, 512), seed: int = 0) -> Path:
    """Write the synthetic experiment (FCS, TIFF, experiment.toml, truth.json) under ``out``.

    Parameters
    ----------
    out : folder
    n_events : int
        Events per EV sample (controls and dilutions scale from it).
    n_fields : int
        Image fields per imaged sample.
    field_shape : (int, int)
        Field size (px).

    Returns
    -------
    Path of the experiment file.
    """
    import tifffile

    from ..io.fcs import write_fcs
    from ..synth import tirf
    from ..synth.flow import synthetic_mesf_beads, synthetic_size_beads

    out = Path(out)
    (out / "flow").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    truth = {"flow": {}, "imaging": {}, "markers": ["CD63", "EpCAM"], "image_markers": IMG_MARKERS,
             "gate_nm": list(GATE_NM)}
    volume_ul = FLOW_RATE * ACQ_S / 60.0

    def write(name, df):
        p = out / "flow" / f"{name}.fcs"
        write_fcs(p, df.to_numpy(), list(df.columns), meta={"$CYT": "evflow synthetic nanoFCM", "$FIL": p.name,
                                                            "THRESHOLD": "(SSC-H,1)"})  # the trigger, as recorded
        return p

    beads = synthetic_mesf_beads(MESF_VALUES, n_per_peak=max(500, n_events // 100), m=M, b=B, seed=seed + 1)
    beads = beads.rename(columns={"FSC": "FSC-H", "SSC": "SSC-H", "FL1": "FL1-H", "FL3": "FL3-H"})
    write("beads_mesf", beads)
    size = synthetic_size_beads(SIZE_BEADS_NM, n_per_population=max(500, n_events // 100), channel="SSC-H",
                                seed=seed + 2)
    write("beads_size", size)

    samples = []
    plan = [
        ("S1", "sample", 0.60, 0.05, 1.0, None, n_events),
        ("S2", "sample", 0.60, 0.15, 1.0, None, n_events),
        ("S3", "sample", 0.60, 0.30, 1.0, None, n_events),
        ("isotype", "isotype", 0.0, 0.0, 1.0, None, n_events // 2),
        ("unstained", "unstained", 0.0, 0.0, 1.0, None, n_events // 4),
        ("S1_detergent", "detergent", 0.60, 0.05, 1.0, "S1", n_events // 20),
        ("S2_d2", "dilution", 0.60, 0.15, 2.0, "S2", n_events // 2),
        ("S2_d4", "dilution", 0.60, 0.15, 4.0, "S2", n_events // 4),
        ("S2_d8", "dilution", 0.60, 0.15, 8.0, "S2", n_events // 8),
    ]
    for i, (name, role, f63, fep, dil, series, n) in enumerate(plan):
        df, t = _ev_frame(n, f63, fep, seed=seed + 10 + i)
        write(name, df)
        truth["flow"][name] = {"role": role, "f_CD63": f63, "f_EpCAM": fep, "dilution": dil,
                               **_truth_summary(t, volume_ul, dil)}
        samples.append({"name": name, "role": role, "flow": f"flow/{name}.fcs", "dilution": dil,
                        **({"series": series} if series else {}),
                        **({"treatment": "detergent lysis (synthetic: 95% of the vesicles removed)"}
                           if role == "detergent" else {})})
    # buffer: a few small noise events, no markers
    rng = np.random.default_rng(seed + 99)
    nb = max(50, n_events // 500)
    buf = pd.DataFrame({"SSC-H": rng.lognormal(math.log(3.0), 0.5, nb), "FL1-H": rng.lognormal(math.log(5.0), 0.4, nb),
                        "FL2-H": rng.lognormal(math.log(5.0), 0.4, nb), "Time": np.sort(rng.uniform(0, ACQ_S, nb))})
    buf.loc[0, "Time"], buf.loc[nb - 1, "Time"] = 0.0, ACQ_S
    write("buffer", buf)
    samples.append({"name": "buffer", "role": "buffer", "flow": "flow/buffer.fcs"})

    # ---- imaging
    kw = dict(shape=field_shape, markers=IMG_MARKERS, camera="scmos", offset=100.0, gain=2.0, photons=1500.0,
              background=10.0, psf_sigma_px=1.3, min_separation_px=6.0, edge_margin_px=4.0)
    reg = tirf(n_vesicles=80, phenotype_fractions={"CD9+ CD63+ CD81+": 1.0}, seed=seed + 200,
               **{**kw, "photons": 4000.0})
    tifffile.imwrite(out / "images" / "beads.tif", reg.images.values[0])
    img_fracs = {
        "S1": {"CD9+ CD63- CD81-": 0.3, "CD9+ CD63+ CD81-": 0.3, "CD9+ CD63+ CD81+": 0.3, "CD9- CD63- CD81+": 0.1},
        "S2": {"CD9+ CD63- CD81-": 0.2, "CD9+ CD63+ CD81-": 0.2, "CD9+ CD63+ CD81+": 0.5, "CD9- CD63- CD81+": 0.1},
        "S3": {"CD9+ CD63- CD81-": 0.1, "CD9+ CD63+ CD81-": 0.2, "CD9+ CD63+ CD81+": 0.6, "CD9- CD63- CD81+": 0.1},
        # negative-control chip: vesicles captured and seen in CD9 only (isotype detection antibodies)
        "isotype": {"CD9+ CD63- CD81-": 1.0},
    }
    from ..schema import phenotype_labels

    labels = phenotype_labels(IMG_MARKERS)
    for k, (name, fr) in enumerate(img_fracs.items()):
        # the control chip is denser: its photon quantiles set the thresholds
        dens = 0.2 if name == "isotype" else 0.05
        syn = tirf(n_fields=n_fields, density_per_um2=dens, phenotype_fractions=fr, seed=seed + 300 + k, **kw)
        files = []
        for f in range(n_fields):
            p = out / "images" / f"{name}_fov{f}.tif"
            tifffile.imwrite(p, syn.images.values[f])
            files.append(f"images/{p.name}")
        counts = np.bincount(syn.truth["bitmask"].to_numpy(), minlength=len(labels))
        truth["imaging"][name] = {"n_vesicles": int(counts.sum()),
                                  "fractions": (counts / max(counts.sum(), 1)).tolist(),
                                  "expected_fractions": [float(fr.get(lab, 0.0)) for lab in labels]}
        next(s for s in samples if s["name"] == name)["images"] = files
    (out / "truth.json").write_text(json.dumps(truth, indent=1))

    toml = [
        "# Synthetic EV experiment written by `evflow demo` (truth in truth.json)",
        "[experiment]",
        'name = "evflow demo"',
        'description = "Synthetic EVs with known truth (evflow.synth): no biological source, isolation or storage"',
        'output = "results"',
        "",
        "[flow]",
        'scatter_channel = "SSC-H"',
        'markers = { "FL1-H" = "CD63", "FL2-H" = "EpCAM" }',
        f"flow_rate_ul_per_min = {FLOW_RATE}",
        'time_channel = "Time"',
        "",
        "[flow.calibration.fluorescence]",
        'file = "flow/beads_mesf.fcs"',
        'channel = "FL1-H"',
        f"values = {MESF_VALUES}",
        'units = "MESF"',
        "",
        "[flow.calibration.size]",
        'file = "flow/beads_size.fcs"',
        'channel = "SSC-H"',
        f"diameters_nm = {SIZE_BEADS_NM}",
        "bead_index = 1.59",
        "wavelength_nm = 488.0",
        "medium_index = 1.333",
        "ev_core_index = 1.38",
        "ev_shell_index = 1.48",
        "ev_shell_nm = 5.0",
        "",
        "[flow.gates]",
        f"size_nm = [{GATE_NM[0]}, {GATE_NM[1]}]",
        "",
        "[thresholds]",
        'rule = "percentile 99.5 of isotype"',
        "",
        "[qc]",
        "max_buffer_fraction = 0.05",
        "min_detergent_reduction = 0.8",
        "min_dilution_r2 = 0.95",
        "",
        "[imaging]",
        f"channels = {json.dumps(IMG_MARKERS)}",
        "pixel_size_nm = 108.0",
        "psf_sigma_px = 1.3",
        "camera_offset = 100.0",
        "camera_gain = 2.0",
        "camera_read_noise_e = 1.6",
        "match_radius_px = 2.0",
        'registration_beads = "images/beads.tif"',
        "",
        "[imaging.thresholds]",
        'rule = "control_quantile"',
        'control = "isotype"',
        "quantile = 0.995",
        "values = { CD9 = 300.0 }",
    ]
    for s in samples:
        toml += ["", "[[samples]]"]
        for k, v in s.items():
            toml.append(f"{k} = {json.dumps(v)}")
    path = out / "experiment.toml"
    path.write_text("\n".join(toml) + "\n")
    return path


def truth_table(ds, truth) -> pd.DataFrame:
    """Recovered versus true phenotype fractions and concentrations."""
    rows = []
    for name, t in truth["flow"].items():
        if name not in ds["sample"].values or t["role"] in ("buffer",):
            continue
        s = ds.sel(sample=name)
        frac = s["fraction_of_parent"].values
        for j, lab in enumerate(ds["phenotype"].values):
            rows.append({"modality": "flow", "sample": name, "quantity": f"fraction {lab}",
                         "true": t["fractions"][j], "recovered": float(frac[j])})
        rows.append({"modality": "flow", "sample": name, "quantity": "concentration /mL",
                     "true": t["concentration_per_ml"], "recovered": float(s["total_concentration_per_ml"])})
    if "image_sample" in ds.dims:
        for name, t in truth["imaging"].items():
            if name not in ds["image_sample"].values:
                continue
            frac = ds["image_fraction_all_fov"].sel(image_sample=name).values
            for j, lab in enumerate(ds["image_phenotype"].values):
                if t["fractions"][j] == 0 and frac[j] < 0.005:
                    continue
                rows.append({"modality": "imaging", "sample": name, "quantity": f"fraction {lab}",
                             "true": t["fractions"][j], "recovered": float(frac[j])})
    df = pd.DataFrame(rows)
    df["error"] = df["recovered"] - df["true"]
    rel = df["quantity"].str.startswith("concentration")
    df.loc[rel, "error"] = df.loc[rel, "recovered"] / df.loc[rel, "true"] - 1.0
    return df


def demo(out="evflow-demo", *, n_events: int = 200_000, n_fields: int = 2, field_shape=(512, 512), scheduler=None,
         backend=None, quiet=False, progress=None, verbose=False, force=False):
    """Build the synthetic experiment in ``out``, run it, and return ``(dataset, truth table)``.

    ``out`` must be new, empty or an earlier evflow output folder (``force=True``: any folder; see
    :mod:`evflow.pipeline.outdir`)."""
    from ..backend import resolve_backend
    from .outdir import OutputFolder
    from .run import run

    if backend is not None:
        resolve_backend(backend)  # backend='cupy' without a working GPU stops here, before anything is written
    out = Path(out)
    OutputFolder(out, force=force).claim()  # before the data are written into it
    exp = build_demo(out / "data", n_events=n_events, n_fields=n_fields, field_shape=field_shape)
    ds = run(exp, output=out, scheduler=scheduler, backend=backend, quiet=quiet, progress=progress, verbose=verbose)
    truth = json.loads((out / "data" / "truth.json").read_text())
    return ds, truth_table(ds, truth)
