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
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        bottom = np.zeros(len(samples))
        for j, p in enumerate(phen):
            ax.bar(np.arange(len(samples)), counts[:, j], bottom=bottom, label=p)
            bottom += counts[:, j]
        ax.set_xticks(np.arange(len(samples)), samples, rotation=60, fontsize=7)
        ax.set_ylabel("count")
        ax.legend(fontsize=6)
        self.canvas.draw_idle()

    def open_sample(self, name):
        """Open a sample's FCS file and image fields in the viewer; returns the new layers."""
        if self.experiment is None:
            return []
        s = next((x for x in self.experiment.samples if x.name == name), None)
        if s is None:
            return []
        layers = []
        if s.flow:
            layers += self.viewer.open(str(self.experiment.resolve(s.flow)), plugin="evflow")
        if s.images:
            from .._reader import read_tiff_layers

            markers = list(self.experiment.imaging.get("channels", [])) or None
            for data, kw, _t in read_tiff_layers([str(self.experiment.resolve(p)) for p in s.images], markers):
                kw["name"] = f"{name} {kw['name']}"
                layers.append(self.viewer.add_image(data, **kw))
        return layers
