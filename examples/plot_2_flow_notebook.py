"""
A nano-flow sample in a notebook
================================

One sample analysed step by step, as in a notebook: MESF bead calibration, the
size-bead scatter calibration (Mie theory) and a size gate in nm, thresholds from
an isotype control, phenotype counts and concentrations in particles per mL.

The files are the demo's FCS files (real FCS 3.1 written by :func:`evflow.write_fcs`).
"""

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import evflow
from evflow.flow.mie import CoatedSphere, Sphere
from evflow.pipeline.demo import build_demo

work = Path(tempfile.mkdtemp(prefix="evflow-example-"))
build_demo(work, n_events=60_000, n_fields=1, field_shape=(160, 160))
flow = work / "flow"

sample = evflow.read_fcs(flow / "S1.fcs")
print(sample.channels, sample.markers, f"{sample.n_events:,} events")

# %%
# Fluorescence calibration: 8-peak beads with their MESF values, dimmest (blank) first.

mesf = evflow.calibrate_mesf(flow / "beads_mesf.fcs", "FL1-H", [0, 792, 2079, 6588, 16471, 47497, 137049, 271647])
print("bead peaks (channel units):", np.round(mesf.peak_medians, 1))
print(f"standard curve r2 = {mesf.r2:.5f}")

# %%
# Scatter calibration with 100-500 nm polystyrene beads, then a size gate of 80-400 nm
# for vesicles modelled as core-shell spheres.

size = evflow.calibrate_scatter(flow / "beads_size.fcs", "SSC-H", [100, 200, 300, 400, 500],
                                bead_model=Sphere(1.59), particle=CoatedSphere(1.38, 1.48, 5.0))
gate = evflow.size_gate(size, 80.0, 400.0, gate_id="EVs")
print(gate)

# %%
# Phenotypes: a marker is positive above the 99.5th percentile of the isotype control
# in the same gate. Concentration uses the flow rate and the acquisition time.

counts = evflow.count_phenotypes(
    {"S1": flow / "S1.fcs"}, parent=gate,
    markers={"CD63": ("FL1-H", "percentile 99.5 of isotype"), "EpCAM": ("FL2-H", "percentile 99.5 of isotype")},
    controls={"isotype": flow / "isotype.fcs"},
)
print(counts["count"].to_pandas())
print((counts["fraction_of_parent"] * 100).round(2).to_pandas())
volume = evflow.analysed_volume_ul(sample, flow_rate_ul_per_min=3.0)
n_gated = int(counts["count"].sum())
print(f"analysed volume {volume['volume_ul']:.2f} uL -> "
      f"{evflow.concentration_per_ml(n_gated, volume['volume_ul']):.3g} size-gated EVs per mL")

# %%
# The sample on a density plot (logicle scales) with the threshold as a line.

thr = float(counts["threshold"].sel(marker="CD63").values.ravel()[0])
events = sample.linear_events()
fl1 = events[:, sample.channel_index("FL1-H")].compute()
ssc = events[:, sample.channel_index("SSC-H")].compute()
fig, ax = plt.subplots(figsize=(5, 4))
ax.hexbin(ssc, np.clip(fl1, 1, None), xscale="log", yscale="log", gridsize=90, bins="log", cmap="viridis")
ax.axhline(thr, color="red", lw=1, label=f"CD63 threshold {thr:.0f}")
ax.set_xlabel("SSC-H (channel units)")
ax.set_ylabel("FL1-H CD63 (channel units)")
ax.legend(loc="lower right")
fig.tight_layout()

# %%
# The same bead calibration on real beads: FlowCal's 8-peak beads measured on a FACScan
# (10-bit FL1 in MEFL), from the test data kept beside the repository (``../shared/data``, or
# ``EVFLOW_SHARED_DATA``). The diagnostic figure shows the populations with their assigned
# values, the standard curve and the residuals; ``cal.qc`` holds the flags behind any warning.

import os
import warnings

env = os.environ.get("EVFLOW_SHARED_DATA")
roots = [Path(env)] if env else [p / "shared" / "data" for p in (Path.cwd(), *Path.cwd().parents)]
shared = next((r for r in roots if (r / "beads" / "flowcal" / "sample001.fcs").is_file()), None)
if shared is None:
    print("FlowCal's bead file is not here (../shared/data): skipped")
else:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        real = evflow.calibrate_mesf(shared / "beads" / "flowcal" / "sample001.fcs", "FL1",
                                     [0, 792, 2079, 6588, 16471, 47497, 137049, 271647],
                                     clustering_channels=["FL1", "FL3"], scatter_channels=["FSC", "SSC"])
    print("peak medians (FL1 channel units):", np.round(real.peak_medians, 1))
    print(f"r2 = {real.r2:.5f}; 1000 channel units = {float(real.to_mesf(1000.0)):.4g} MEFL")
    for w in caught:
        print("warning:", w.message)
    real.plot()
