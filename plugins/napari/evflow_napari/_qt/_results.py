"""Results browser: counts per sample and phenotype (table and bar chart); a click opens the sample's data."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

__all__ = ["ResultsBrowserWidget"]


class ResultsBrowserWidget(QWidget):
    """Browse an evflow ``results.zarr``: counts per sample and phenotype (flow or imaging).

    Clicking a sample's row opens its FCS file (density + gates layers) and
    its image fields in the viewer.
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.ds = None
        self.path = None
        self.experiment = None
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.label = QLabel("no results open")
        btn = QPushButton("Open results.zarr…")
        btn.clicked.connect(self._dialog)
        row.addWidget(self.label, 1)
        row.addWidget(btn)
        lay.addLayout(row)
        self.modality = QComboBox()
        self.modality.currentIndexChanged.connect(self._fill)
        lay.addWidget(self.modality)
        self.table = QTableWidget(0, 0)
        self.table.cellClicked.connect(lambda r, c: self.open_sample(self.samples[r]))
        lay.addWidget(self.table)
        from ._legend import PhenotypeLegend

        self.legend = PhenotypeLegend()
        lay.addWidget(self.legend)
        self.detail_label = QLabel("")
        lay.addWidget(self.detail_label)
        self.detail = QTableWidget(0, 0)
        lay.addWidget(self.detail)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        lay.addWidget(self.canvas)
        self.samples: list = []

    def _dialog(self):
        path = QFileDialog.getExistingDirectory(self, "results.zarr folder")
        if path:
            self.load(path)

    def load(self, path):
        """Show the counts of a ``results.zarr``."""
        from .._reader import _experiment_of, open_results

        self.path = str(path)
        self.ds = open_results(path)
        self.experiment = _experiment_of(self.ds, path)
        self.label.setText(self.ds.attrs.get("title", str(path)))
        self.modality.blockSignals(True)
        self.modality.clear()
        if "count" in self.ds:
            self.modality.addItem("flow")
        if "image_count_all_fov" in self.ds:
            self.modality.addItem("imaging")
        self.modality.blockSignals(False)
        self._fill()

    def counts(self):
        """(samples, phenotypes, counts array) of the chosen modality."""
        if self.modality.currentText() == "imaging":
            ds = self.ds
            return ([str(s) for s in ds["image_sample"].values], [str(p) for p in ds["image_phenotype"].values],
                    np.asarray(ds["image_count_all_fov"].values))
        ds = self.ds
        return [str(s) for s in ds["sample"].values], [str(p) for p in ds["phenotype"].values], np.asarray(
            ds["count"].values)

    def _fill(self, *_):
        if self.ds is None or not self.modality.count():
            return
        samples, phen, counts = self.counts()
        self.samples = samples
        self.table.clear()
        self.table.setRowCount(len(samples))
        self.table.setColumnCount(len(phen) + 1)
        self.table.setHorizontalHeaderLabels(["sample", *phen])
        for i, s in enumerate(samples):
            self.table.setItem(i, 0, QTableWidgetItem(s))
            for j in range(len(phen)):
                self.table.setItem(i, j + 1, QTableWidgetItem(f"{int(counts[i, j]):,}"))
        from evflow.palette import phenotype_colour

        bits = self.bitmasks()
        self.colours = {p: phenotype_colour(b) for p, b in zip(phen, bits)}
        self.legend.set_phenotypes(self.colours)
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        bottom = np.zeros(len(samples))
        for j, p in enumerate(phen):
            ax.bar(np.arange(len(samples)), counts[:, j], bottom=bottom, label=p, color=self.colours[p])
            bottom += counts[:, j]
        ax.set_xticks(np.arange(len(samples)), samples, rotation=60, fontsize=7)
        ax.set_ylabel("count")
        ax.legend(fontsize=6)
        self.canvas.draw_idle()

    def bitmasks(self):
        """Bitmask of each phenotype of the chosen modality (colours follow it)."""
        name = "image_bitmask" if self.modality.currentText() == "imaging" else "bitmask"
        n = len(self.counts()[1])
        return np.asarray(self.ds[name].values, np.int64) if name in self.ds.coords else np.arange(n)

    def show_details(self, name):
        """Counts, fractions with 95 % intervals and (imaging) per-field counts of one sample."""
        from .._results import sample_table

        mod = "imaging" if self.modality.currentText() == "imaging" else "flow"
        t = sample_table(self.ds, name, mod)
        self.details = t
        cols = ["phenotype", "count", "fraction", "95% interval"] + [c for c in t.columns if c.startswith("fov ")]
        self.detail.clear()
        self.detail.setRowCount(len(t))
        self.detail.setColumnCount(len(cols))
        self.detail.setHorizontalHeaderLabels(cols)
        for i, r in t.iterrows():
            ok = np.isfinite(r["fraction"])
            vals = [r["phenotype"], f"{int(r['count']):,}", f"{r['fraction']:.4f}" if ok else "",
                    f"[{r['fraction_lo']:.4f}, {r['fraction_hi']:.4f}]" if ok else ""]
            vals += [f"{int(r[c]):,}" for c in cols[4:]]
            for j, v in enumerate(vals):
                self.detail.setItem(i, j, QTableWidgetItem(v))
        self.detail_label.setText(f"{name} ({mod})")
        return t

    def open_sample(self, name):
        """Open a sample's FCS file and its image fields (registered to the reference channel, with the run's
        vesicles) in the viewer; returns the new layers."""
        if self.ds is not None and name in self.samples:
            self.show_details(name)
        if self.experiment is None:
            return []
        s = next((x for x in self.experiment.samples if x.name == name), None)
        if s is None:
            return []
        layers = []
        if s.flow:
            layers += self.viewer.open(str(self.experiment.resolve(s.flow)), plugin="evflow")
        if s.images and self.experiment.path is not None:
            from .._reader import read_experiment_layers

            for data, kw, kind in read_experiment_layers(self.experiment.path, samples=[name], flow=False):
                kw["name"] = f"{name} {kw['name']}"
                add = self.viewer.add_points if kind == "points" else self.viewer.add_image
                layers.append(add(data, **kw))
        return layers
