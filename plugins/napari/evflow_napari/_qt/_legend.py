"""Phenotype legend: a coloured swatch, the phenotype and its count, in the colours of :mod:`evflow.palette`."""

from __future__ import annotations

from qtpy.QtWidgets import QGridLayout, QLabel, QWidget

__all__ = ["PhenotypeLegend"]


class PhenotypeLegend(QWidget):
    """Which colour is which phenotype (the points' border colours, the report's and the browser's bars)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(2, 2, 2, 2)
        self.entries: dict = {}

    def set_phenotypes(self, colours: dict, counts: dict | None = None):
        """Show ``colours`` (label -> hex) with optional ``counts`` (label -> int)."""
        while self.grid.count():
            w = self.grid.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        self.entries = dict(colours)
        for i, (lab, col) in enumerate(colours.items()):
            sw = QLabel("")
            sw.setFixedSize(14, 14)
            sw.setStyleSheet(f"background-color: {col}; border: 1px solid #444;")
            sw.setToolTip(col)
            self.grid.addWidget(sw, i, 0)
            self.grid.addWidget(QLabel(str(lab)), i, 1)
            if counts is not None:
                self.grid.addWidget(QLabel(f"{int(counts.get(lab, 0)):,}"), i, 2)
