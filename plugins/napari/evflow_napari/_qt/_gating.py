"""Flow gating widget: density plot, gates drawn in a Shapes layer, live phenotype counts."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._experiment import experiment_gating, save_thresholds
from .._flow import (
    TRANSFORM_KINDS,
    FlowView,
    axis_ticks,
    channel_top,
    convert_shapes,
    default_markers,
    gates_to_shapes,
    shapes_to_gates,
)

__all__ = ["FlowGatingWidget"]

#: phenotypes are built from at most this many markers by default (2**k rows)
MAX_DEFAULT_MARKERS = 6


def _evflow_meta(layer):
    return (getattr(layer, "metadata", None) or {}).get("evflow") or {}


class FlowGatingWidget(QWidget):
    """Gate a flow sample: pick sample, channels and display transforms, draw gates, set marker thresholds.

    The counts table shows ``evflow.count_phenotypes`` of the active gate (the
    shape last added or edited; all events when there is none) and is
    recomputed in a worker thread whenever a gate or a threshold changes.
    """

    counts_updated = Signal(object)  # the counts Dataset
    density_updated = Signal(object)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.view: FlowView | None = None
        self.density_layer = None
        self.gates_layer = None
        self.markers: dict = {}
        self.thresholds: dict = {}
        self.candidates: dict = {}
        self.experiment_thresholds: dict = {}
        self.gating = None
        self.axes_layer = None
        self.active_gate: int | None = None
        self.counts = None
        self.error: str | None = None
        self._gen = 0
        self._dgen = 0
        self.counts_generation = 0  # generation of the counts shown
        self.density_generation = 0
        self._workers = set()
        self._recounters: dict = {}

        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.sample_box = QComboBox()
        open_btn = QPushButton("Open FCS…")
        open_btn.clicked.connect(self._open_dialog)
        exp_btn = QPushButton("Open experiment…")
        exp_btn.clicked.connect(self._open_experiment_dialog)
        row = QHBoxLayout()
        row.addWidget(self.sample_box, 1)
        row.addWidget(open_btn)
        row.addWidget(exp_btn)
        form.addRow("Sample", row)
        self.x_box, self.y_box = QComboBox(), QComboBox()
        self.tx_box, self.ty_box = QComboBox(), QComboBox()
        for b in (self.tx_box, self.ty_box):
            b.addItems(TRANSFORM_KINDS)
        form.addRow("X channel", self.x_box)
        form.addRow("X transform", self.tx_box)
        form.addRow("Y channel", self.y_box)
        form.addRow("Y transform", self.ty_box)
        lay.addLayout(form)
        lay.addWidget(QLabel("Markers forming phenotypes (ticked)"))
        self.marker_list = QListWidget()
        self.marker_list.setMaximumHeight(110)
        self.marker_list.itemChanged.connect(self._markers_ticked)
        lay.addWidget(self.marker_list)
        lay.addWidget(QLabel("Marker thresholds (channel units; display value on the logicle scale)"))
        self.marker_form = QFormLayout()
        lay.addLayout(self.marker_form)
        self.threshold_source = QLabel("")
        self.threshold_source.setWordWrap(True)
        lay.addWidget(self.threshold_source)
        self.save_thr_btn = QPushButton("Write thresholds to the experiment file")
        self.save_thr_btn.clicked.connect(self.write_thresholds)
        lay.addWidget(self.save_thr_btn)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["phenotype", "events", "fraction of parent"])
        lay.addWidget(self.table)
        btns = QHBoxLayout()
        self.save_btn, self.load_btn = QPushButton("Save gates…"), QPushButton("Load gates…")
        self.save_btn.clicked.connect(lambda: self._file_dialog(save=True))
        self.load_btn.clicked.connect(lambda: self._file_dialog(save=False))
        btns.addWidget(self.save_btn)
        btns.addWidget(self.load_btn)
        lay.addLayout(btns)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(40)
        self._timer.timeout.connect(self.update_counts)

        self.sample_box.currentIndexChanged.connect(self._sample_chosen)
        for b in (self.x_box, self.y_box, self.tx_box, self.ty_box):
            b.currentIndexChanged.connect(self._axes_changed)
        # a reader inserts a sample's density layer before its gates layer: look once both are in
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(0)
        self._refresh_timer.timeout.connect(self._refresh_samples)
        self.viewer.layers.events.inserted.connect(self._layer_inserted)
        self.viewer.layers.events.removed.connect(self._refresh_samples)
        self._refresh_samples()

    # ------------------------------------------------------------ samples
    def _density_layers(self):
        return [ly for ly in self.viewer.layers if _evflow_meta(ly).get("kind") == "flow"]

    def _layer_inserted(self, *_):
        self._refresh_timer.start()

    def _refresh_samples(self, *_):
        names = [ly.name for ly in self._density_layers()]
        cur = self.sample_box.currentText()
        if names == [self.sample_box.itemText(i) for i in range(self.sample_box.count())]:
            return
        self.sample_box.blockSignals(True)
        self.sample_box.clear()
        self.sample_box.addItems(names)
        if cur in names:
            self.sample_box.setCurrentText(cur)
        self.sample_box.blockSignals(False)
        if names and (self.density_layer is None or self.density_layer.name != self.sample_box.currentText()):
            self._sample_chosen()

    def _open_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open FCS file", "", "FCS files (*.fcs *.FCS)")
        if path:
            self.open_sample(path)

    def _open_experiment_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open experiment", "", "Experiment files (*.toml)")
        if path:
            self.open_experiment(path)

    def open_experiment(self, path):
        """Add an experiment's flow samples to the viewer (a density image and a gates layer with the
        experiment's gates per sample, :func:`evflow_napari._experiment_flow.experiment_flow_layers`) and select
        the first; samples already open keep their layers.  Returns the layers added."""
        from napari.layers import Layer

        from .._experiment_flow import experiment_flow_layers

        added = []
        for data, kw, kind in experiment_flow_layers(path):
            m = kw["metadata"]["evflow"]
            have = [ly for ly in self.viewer.layers if _evflow_meta(ly).get("kind") == m["kind"]
                    and _evflow_meta(ly).get("path") == m["path"]]
            if not have:
                added.append(self.viewer.add_layer(Layer.create(data, kw, kind)))
        self._refresh_samples()
        first = next((ly for ly in added if _evflow_meta(ly).get("kind") == "flow"), None)
        if first is not None:
            self.sample_box.setCurrentText(first.name)
            self._sample_chosen()
        return added

    def open_sample(self, path):
        """Open an FCS file in the viewer (evflow reader) and select it here."""
        layers = self.viewer.open(path, plugin="evflow")
        dens = [ly for ly in layers if _evflow_meta(ly).get("kind") == "flow"]
        if dens:
            self._refresh_samples()
            self.sample_box.setCurrentText(dens[0].name)
            self._sample_chosen()
        return layers

    def _sample_chosen(self, *_):
        name = self.sample_box.currentText()
        dens = [ly for ly in self._density_layers() if ly.name == name]
        if not dens:
            return
        self.density_layer = dens[0]
        spec = _evflow_meta(self.density_layer)
        for ly in self.viewer.layers:  # one sample on the canvas at a time: the others' layers are hidden
            m = _evflow_meta(ly)
            if m.get("kind") in ("flow", "gates", "axes"):
                ly.visible = m.get("path") == spec["path"]
        self.view = FlowView.from_spec(spec)
        if self.gates_layer is not None:  # edits of another sample's gates no longer recount this one
            try:
                self.gates_layer.events.data.disconnect(self._gates_changed)
            except Exception:  # noqa: BLE001 - the layer was removed
                pass
        self.gates_layer = self._find_gates_layer(spec["path"])
        if self.gates_layer is None:
            data, kw, _ = self.view.gates_layer_data()
            self.gates_layer = self.viewer.add_shapes(None, **kw)
        self.gates_layer.events.data.connect(self._gates_changed)
        for box, val in ((self.x_box, self.view.x), (self.y_box, self.view.y)):
            box.blockSignals(True)
            box.clear()
            box.addItems(list(self.view.sample.channels))
            box.setCurrentText(val)
            box.blockSignals(False)
        for box, val in ((self.tx_box, self.view.x_transform), (self.ty_box, self.view.y_transform)):
            box.blockSignals(True)
            box.setCurrentText(val)
            box.blockSignals(False)
        self.thresholds = {}
        self._build_markers()
        self._draw_axes()
        try:
            cam = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera
            cam.orientation2d = ("up", "right")  # y axis of the plot upwards
        except Exception:  # noqa: BLE001 - older napari: plot shown with y downwards
            pass
        self.active_gate = len(self.gates_layer.data) - 1 if len(self.gates_layer.data) else None
        self.schedule_counts()

    def _find_gates_layer(self, path):
        for ly in self.viewer.layers:
            m = _evflow_meta(ly)
            if m.get("kind") == "gates" and m.get("path") == path:
                return ly
        return None

    def _build_markers(self):
        """Markers and thresholds: the experiment's (markers, the run's or fixed thresholds) when the file
        belongs to one, else the first few marker channels with a threshold at mid-scale (logicle 0.5)."""
        sample = self.view.sample
        self.gating = experiment_gating(self.view.path, experiment=self.view.experiment)
        candidates = default_markers(sample)
        chosen = dict(list(candidates.items())[:MAX_DEFAULT_MARKERS])
        self.experiment_thresholds = {}
        if self.gating and self.gating["markers"] and all(c in sample.channels for c in self.gating["markers"].values()):
            chosen = dict(self.gating["markers"])
            candidates = {**chosen, **{m: c for m, c in candidates.items() if c not in chosen.values()}}
            self.experiment_thresholds = dict(self.gating["thresholds"] or {})
        self.candidates = candidates
        self.marker_list.blockSignals(True)
        self.marker_list.clear()
        for m, c in candidates.items():
            it = QListWidgetItem(m if m == c else f"{m} ({c})")
            it.setData(Qt.ItemDataRole.UserRole, m)
            it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            it.setCheckState(Qt.CheckState.Checked if m in chosen else Qt.CheckState.Unchecked)
            self.marker_list.addItem(it)
        self.marker_list.blockSignals(False)
        src = (self.gating or {}).get("source") if self.experiment_thresholds else ""
        self.threshold_source.setText(f"thresholds from {src}" if src else
                                      "thresholds: mid-scale defaults (no experiment run or fixed values found)")
        self.save_thr_btn.setEnabled(bool(self.gating))
        self._set_markers(chosen)

    def _markers_ticked(self, *_):
        names = [self.marker_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.marker_list.count())
                 if self.marker_list.item(i).checkState() == Qt.CheckState.Checked]
        self.set_markers(names)

    def set_markers(self, names):
        """Choose the markers that form phenotypes (names of the marker list)."""
        unknown = [n for n in names if n not in self.candidates]
        if unknown:
            from evflow.errors import GatingError

            raise GatingError(f"{self.view.path}: unknown marker(s) {unknown}; markers are {list(self.candidates)}")
        self.marker_list.blockSignals(True)
        for i in range(self.marker_list.count()):
            it = self.marker_list.item(i)
            on = it.data(Qt.ItemDataRole.UserRole) in names
            it.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
        self.marker_list.blockSignals(False)
        self._set_markers({n: self.candidates[n] for n in self.candidates if n in names})
        self.schedule_counts()

    def _set_markers(self, markers):
        old = {m: sp.value() for m, sp in self.thresholds.items()}
        while self.marker_form.rowCount():
            self.marker_form.removeRow(0)
        self.markers = dict(markers)
        self.thresholds, self.display_labels = {}, {}
        for name, ch in self.markers.items():
            top = channel_top(self.view.sample, ch)
            tr = self.view.transform(ch, "logicle")
            if name in old:
                val = old[name]
            elif name in self.experiment_thresholds:
                val = self.experiment_thresholds[name]
            else:
                val = float(np.asarray(tr.inverse(np.array([0.5])))[0])
            sp = QDoubleSpinBox()
            sp.setRange(-top, top)
            sp.setDecimals(6)
            sp.setSingleStep(max(top / 1000.0, 1e-3))
            sp.setValue(val)
            lab = QLabel("")
            self.thresholds[name] = sp
            self.display_labels[name] = lab
            sp.valueChanged.connect(lambda v, n=name: self._threshold_changed(n))
            row = QHBoxLayout()
            row.addWidget(sp, 1)
            row.addWidget(lab)
            self.marker_form.addRow(f"{name} ({ch})" if name != ch else name, row)
            self._show_display(name)

    def _show_display(self, name):
        tr = self.view.transform(self.markers[name], "logicle")
        d = float(np.asarray(tr.apply(np.array([self.thresholds[name].value()], np.float64)))[0])
        self.display_labels[name].setText(f"display {d:.3f}")

    def _threshold_changed(self, name):
        self._show_display(name)
        self.schedule_counts()

    def set_threshold(self, marker, value, scale="channel"):
        """Set a marker threshold in channel units (``scale="channel"``) or on the display scale of the
        marker's logicle transform (``scale="display"``)."""
        if scale == "display":
            tr = self.view.transform(self.markers[marker], "logicle")
            value = float(np.asarray(tr.inverse(np.array([float(value)], np.float64)))[0])
        elif scale != "channel":
            from evflow.errors import GatingError

            raise GatingError(f"threshold scale must be 'channel' or 'display', got {scale!r}")
        self.thresholds[marker].setValue(float(value))

    def threshold_values(self) -> dict:
        """name -> threshold in channel units (linear scale)."""
        return {m: float(sp.value()) for m, sp in self.thresholds.items()}

    def marker_spec(self) -> dict:
        """name -> (channel, threshold in channel units, None), as passed to :meth:`Recounter.counts`."""
        return {m: (ch, float(self.thresholds[m].value()), None) for m, ch in self.markers.items()}

    def write_thresholds(self, path=None):
        """Write the thresholds into the experiment file's ``[thresholds]`` (rule ``fixed``)."""
        path = path or (self.gating or {}).get("experiment")
        if not path:
            return None
        return save_thresholds(path, self.threshold_values())

    def _draw_axes(self):
        """Tick labels in channel units along the density image's bottom and left edges (a Points layer with text)."""
        tx, ty = self.view.transforms
        px, lx = axis_ticks(tx, channel_top(self.view.sample, self.view.x))
        py, lyl = axis_ticks(ty, channel_top(self.view.sample, self.view.y))
        pts = np.r_[np.column_stack([np.full(len(px), -0.03), px]), np.column_stack([py, np.full(len(py), -0.06)])]
        import pandas as pd

        feats = pd.DataFrame({"label": [*lx, *lyl], "axis": ["x"] * len(px) + ["y"] * len(py)})
        name = f"{self.view.name} axes"
        ly = next((x for x in self.viewer.layers if x.name == name), None)
        if ly is None:
            ly = self.viewer.add_points(pts, features=feats, name=name, size=0.006, face_color="white",
                                        border_width=0, text={"string": "{label}", "color": "white", "size": 9},
                                        metadata={"evflow": {"kind": "axes", "path": self.view.path}})
        else:
            ly.data = pts
            ly.features = feats
            ly.text = {"string": "{label}", "color": "white", "size": 9}
        self.axes_layer = ly
        return ly

    # ------------------------------------------------------------ axes
    def _axes_changed(self, *_):
        if self.view is None:
            return
        self.set_axes(self.x_box.currentText(), self.y_box.currentText(), self.tx_box.currentText(),
                      self.ty_box.currentText())

    def set_axes(self, x, y, x_transform, y_transform):
        """Change the plotted channels/transforms; the density image is recomputed in a worker thread.

        Gates on an axis that keeps its channel and changes its transform are redrawn on the new display
        scale (the same events stay inside, up to events on the gate's edge); on an axis whose channel
        changes they keep their display coordinates.
        """
        from napari.qt.threading import create_worker

        spec = {**self.view.spec(), "x": x, "y": y, "x_transform": x_transform, "y_transform": y_transform}
        view = FlowView.from_spec(spec)
        if view.x == self.view.x and view.y == self.view.y:
            view._xy_cache = self.view._xy_cache  # same channels: keep the events in memory
        old_view = self.view
        self.view = view
        ly = self.gates_layer
        if ly is not None and len(ly.data):
            data, types = convert_shapes(ly.data, ly.shape_type, old_view, view)
            if types != list(ly.shape_type) or any(
                    np.shape(a) != np.shape(b) or not np.array_equal(a, b) for a, b in zip(data, ly.data)):
                names = list(ly.features["gate"]) if "gate" in ly.features.columns else None
                active = self.active_gate
                ly.data = list(zip(data, types))
                if names is not None:
                    ly.features = ly.features.assign(gate=names)
                self.active_gate = active
        self._dgen += 1
        gen = self._dgen
        w = create_worker(view.image_layer_data, _start_thread=False)
        w.returned.connect(lambda res, gen=gen: self._density_done(gen, res))
        w.errored.connect(self._failed)
        self._start(w)
        self.schedule_counts()

    def _density_done(self, gen, res):
        if gen != self._dgen:
            return
        data, kw, _ = res
        ly = self.density_layer
        ly.metadata = kw["metadata"]
        ly.data = data
        ly.contrast_limits = kw["contrast_limits"]
        try:
            ly.axis_labels = kw["axis_labels"]
            self.gates_layer.axis_labels = kw["axis_labels"]
        except Exception:  # noqa: BLE001 - axis labels are cosmetic
            pass
        self.gates_layer.metadata = {"evflow": {**self.view.spec(), "kind": "gates"}}
        self._draw_axes()
        self.density_generation = gen
        self.density_updated.emit(kw["metadata"]["evflow"]["density"])

    # ------------------------------------------------------------ gates and counts
    def _gates_changed(self, event=None):
        action = str(getattr(event, "action", ""))
        idx = getattr(event, "data_indices", None)
        n = len(self.gates_layer.data)
        if n == 0:
            self.active_gate = None
        elif "remov" in action or not idx:
            self.active_gate = n - 1
        else:
            i = int(idx[0])
            self.active_gate = i if 0 <= i < n else n - 1
        if "ing" in action and "add" not in action and "chang" not in action:
            return  # 'adding'/'changing'/'removing' fire before the edit is done
        self.schedule_counts()

    def gates(self):
        """The gates (evflow objects) of the Shapes layer, in order."""
        ly = self.gates_layer
        names = list(ly.features["gate"]) if "gate" in ly.features.columns else None
        return shapes_to_gates(ly.data, ly.shape_type, {**self.view.spec(), "kind": "gates"}, names)

    def schedule_counts(self, *_):
        self._gen += 1
        self._timer.start()

    def update_counts(self):
        """Recompute the counts of the active gate in a worker thread (the viewer stays responsive)."""
        from napari.qt.threading import create_worker

        if self.view is None:
            return
        gen = self._gen
        try:
            gates = self.gates()
            gate = gates[self.active_gate] if gates and self.active_gate is not None else None
        except Exception as exc:  # noqa: BLE001 - a half-drawn or degenerate shape: show why
            self._failed(exc)
            return
        w = create_worker(self.recounter().counts, gate, self.marker_spec(), _start_thread=False)
        w.returned.connect(lambda ds, gen=gen, gate=gate: self._counts_done(gen, gate, ds))
        w.errored.connect(self._failed)
        self._start(w)

    def recounter(self):
        """The sample's :class:`~evflow_napari._recount.Recounter` (events, display values, gate memberships
        and phenotype codes kept between recounts; one per file, whatever the plotted axes)."""
        from .._recount import Recounter

        rc = self._recounters.get(self.view.path)
        if rc is None:
            rc = self._recounters[self.view.path] = Recounter(self.view)
            if len(self._recounters) > 4:  # a few samples' events in memory, the oldest dropped
                self._recounters.pop(next(iter(self._recounters)))
        return rc

    def _start(self, w):
        self._workers.add(w)
        w.finished.connect(lambda w=w: self._workers.discard(w))
        w.start()

    def _failed(self, exc):
        self.error = f"{type(exc).__name__}: {exc}"
        self.status.setText(self.error)

    def _counts_done(self, gen, gate, ds):
        if gen != self._gen:
            return  # a newer edit is on its way
        self.counts = ds
        self.error = None
        s = ds.isel(sample=0)
        n_par, n_tot = int(s["n_parent"]), int(s["n_total"])
        gid = gate.id if gate is not None else "all events"
        self.status.setText(f"parent: {gid}: {n_par:,} of {n_tot:,} events")
        labels = [str(p) for p in ds["phenotype"].values]
        self.table.setRowCount(len(labels))
        for i, lab in enumerate(labels):
            c = int(s["count"].values[i])
            f = float(s["fraction_of_parent"].values[i])
            for j, txt in enumerate((lab, f"{c:,}", f"{f:.4f}" if np.isfinite(f) else "")):
                self.table.setItem(i, j, QTableWidgetItem(txt))
        self.table.resizeColumnsToContents()  # whole phenotype names
        self.counts_generation = gen
        self.counts_updated.emit(ds)

    # ------------------------------------------------------------ files
    def _file_dialog(self, save):
        if save:
            path, _ = QFileDialog.getSaveFileName(self, "Save gates (Gating-ML 2.0)", "gates.xml", "Gating-ML (*.xml)")
            if path:
                self.save_gates(path)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Load gates (Gating-ML 2.0)", "", "Gating-ML (*.xml)")
            if path:
                self.load_gates(path)

    def save_gates(self, path):
        """Write the gates as Gating-ML 2.0 (through the plugin's writer)."""
        from .._writer import write_gates

        ly = self.gates_layer
        return write_gates(str(path), ly.data, {"name": ly.name, "metadata": {"evflow": {**self.view.spec(),
                                                                                        "kind": "gates"}},
                                               "shape_type": ly.shape_type, "features": ly.features})

    def load_gates(self, path):
        """Add the 2-D gates of a Gating-ML file drawn on the plotted channels to the gates layer."""
        import evflow

        strategy = evflow.read_gatingml(path)
        data, types, ids = gates_to_shapes(strategy, self.view.x, self.view.y)
        if not data:
            self._failed(ValueError(f"{path}: no polygon, rectangle or ellipse gate on {self.view.x} x {self.view.y}"))
            return 0
        ly = self.gates_layer
        old = list(ly.features["gate"]) if "gate" in ly.features.columns else [f"gate{i + 1}" for i in
                                                                                 range(len(ly.data))]
        ly.add(data, shape_type=types)
        ly.features = ly.features.assign(gate=old + list(ids))
        self.active_gate = len(ly.data) - 1
        self.schedule_counts()
        return len(data)
