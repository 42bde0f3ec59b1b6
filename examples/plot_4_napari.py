"""
Interactive inspection in napari
================================

The evflow plugin opens FCS files as density images of two channels with a
layer for gates, TIFF fields as one layer per marker, and ``results.zarr`` with
the detected vesicles as points coloured by phenotype. Its three widgets gate
flow samples (the counts table follows every gate edit), detect vesicles on the
current field, and browse the results of a run.

The screenshots below are taken from a real napari viewer while this page is
built (on a virtual X display).
"""

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import napari

from evflow.pipeline.demo import build_demo

work = Path(tempfile.mkdtemp(prefix="evflow-example-"))
build_demo(work, n_events=30_000, n_fields=1, field_shape=(256, 256))

viewer = napari.Viewer(show=False)
viewer.window.resize(1400, 800)
layers = viewer.open(str(work / "flow" / "S1.fcs"), plugin="evflow")
print([f"{layer.name} ({type(layer).__name__})" for layer in viewer.layers])
dock, gating = viewer.window.add_plugin_dock_widget("evflow", "Flow gating")
viewer.reset_view()
shot_flow = viewer.screenshot(canvas_only=False, flash=False)

# %%
# An image field opens as one layer per marker, named by marker.

viewer.layers.clear()
viewer.open(str(work / "images" / "S1_fov0.tif"), plugin="evflow")
print([layer.name for layer in viewer.layers])
viewer.window.remove_dock_widget(dock)
viewer.reset_view()
shot_field = viewer.screenshot(canvas_only=True, flash=False)

fig, (a0, a1) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.75, 1]})
a0.imshow(shot_flow)
a0.set_title("an FCS file with the flow-gating widget")
a1.imshow(shot_field)
a1.set_title("a three-colour TIRF field")
for a in (a0, a1):
    a.set_axis_off()
fig.tight_layout()
plt.show()
viewer.close()
