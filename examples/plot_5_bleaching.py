"""
Copies per vesicle: photobleaching steps, unit brightness, one scale with flow
==============================================================================

A bleaching movie of vesicles (drifting, with Poisson noise) from
:func:`evflow.synth.bleaching_movie`: traces per vesicle, steps counted,
the photons of one fluorophore, then every vesicle of a still TIRF field
converted to fluorophores and antibodies; flow events in MESF join the same
scale through the dye's MESF equivalence.
"""

import matplotlib.pyplot as plt
import numpy as np

import evflow

movie, yx, truth = evflow.synth.bleaching_movie((96, 96), [1, 2, 3, 1, 2, 1, 3, 2, 1, 1, 2, 1], n_frames=300,
                                                unit_photons=400.0, drift_px_per_frame=(0.01, -0.005), seed=2)
traces = evflow.extract_traces(movie)  # vesicles detected on the first frames, drift registered
steps = evflow.count_bleaching_steps(traces.traces)
print(steps.to_frame()[["n_steps", "flag", "confidence", "unit_height"]].head())

fig, ax = plt.subplots(figsize=(7, 3))
for i in range(4):
    ax.plot(traces.traces[:, i], lw=0.6, label=f"vesicle {i}: {steps.n_steps[i]} steps")
ax.set_xlabel("frame")
ax.set_ylabel("photons per frame")
ax.legend(fontsize=8)

# %%
# The unit brightness: the median height of single steps, with a bootstrap interval.

unit = evflow.unit_brightness(steps, channel="CD63")
print(f"{unit.photons:.0f} photons per dye per frame ({unit.ci_low:.0f}-{unit.ci_high:.0f}; simulated 400)")

# %%
# Still images of vesicles carrying 6 antibodies of 2 dyes each, taken at twice the
# movie's exposure: photons -> fluorophores -> antibodies per vesicle.

chip = evflow.synth.tirf((128, 128), markers=["CD63"], n_vesicles=30, photons=6 * 2 * 400.0 * 2, photons_cv=0,
                         background=5, camera="ideal", chromatic_shift=False, edge_margin_px=8, seed=4)
_, spots = evflow.count_vesicles(chip.images, markers=["CD63"])
copies = evflow.copies_per_vesicle(spots, unit, dye_per_antibody=2.0, exposure_ratio=2.0)
print(f"median antibodies per vesicle: {np.median(copies['antibodies_CD63']):.2f} (truth 6)")

# %%
# Flow on the same scale: MESF per event over the MESF one dye molecule is worth.

mesf = np.random.default_rng(0).lognormal(np.log(3000.0), 0.3, 5000)
fluor, antibodies = evflow.fluorophores_from_mesf(mesf, 1.5, dye_per_antibody=2.0)
print(f"flow: median {np.median(antibodies):.0f} antibodies per event")

# %%
# In an experiment file the movies are ``[[samples.bleaching]]`` tables and the
# equivalence ``[flow.copies]``; :func:`evflow.run` then writes ``copies_median``
# and ``copies_hist`` for both modalities and draws them side by side.
