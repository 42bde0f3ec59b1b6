"""Vesicle detection widget: parameters, run on the current field in a worker, Points layer and counts."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._detection import DetectionParameters, detect_field, experiment_thresholds, export_parameters

REGISTRATION_CHOICES = ("experiment beads", "bead field…", "fit on this field", "none")
POSITIVITY_CHOICES = ("experiment rule", "detected in the channel")

__all__ = ["VesicleDetectionWidget"]


def _meta(layer):
    return (getattr(layer, "metadata", None) or {}).get("evflow") or {}


def _spin(lo, hi, val, step, dec=3):
    s = QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setDecimals(dec)
    s.setSingleStep(step)
    s.setValue(val)
    return s


class VesicleDetectionWidget(QWidget):
    """Detect vesicles in the current field of an evflow image stack (all its channels).

    Runs :func:`evflow_napari.detect_field`, the computation of ``evflow run``'s
    image stage (detection per channel, channel registration, merge, photons
    per marker, thresholds), on the GPU when one is available, in a worker
    thread with napari's progress bar.  The registration comes from the
    experiment's registration beads, a chosen bead field, a fit on the field
    itself, or none; positivity from the experiment's ``[imaging.thresholds]``
    rule or detection.  Vesicles are shown as a Points layer (reference-channel
    frame; the channel layers get the registration as their affine) with the
    counts per phenotype and the density (per um^2 when the pixel size is known).
    """

    detected = Signal(object)
    #: one channel done; emitted from the worker thread, delivered in the GUI thread (queued)
    _channel_done = Signal(int)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.vesicles = None
        self.tables = None
        self.error = None
        self.experiment_file = None
        self.experiment_imaging = {}
        self.registration = None
        self.thresholds = None
        self._workers = set()
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.layer_box = QComboBox()
        form.addRow("Image (field stack)", self.layer_box)
        self.sigma = _spin(0.3, 10.0, 1.3, 0.1)
        self.fp = _spin(0.001, 100.0, 0.1, 0.05)
        self.auto = QCheckBox("automatic (from noise and false positives)")
        self.auto.setChecked(True)
        self.thr = _spin(0.0, 1e7, 60.0, 5.0, 1)
        self.thr.setEnabled(False)
        self.auto.toggled.connect(lambda on: self.thr.setEnabled(not on))
        self.offset = _spin(0.0, 1e5, 0.0, 1.0, 2)
        self.gain = _spin(1e-3, 1e4, 1.0, 0.1)
        d = DetectionParameters()
        self.sigma.setValue(d.psf_sigma_px)
        self.fp.setValue(d.false_positives)
        self.radius = _spin(0.1, 20.0, d.match_radius_px, 0.5, 2)
        self.registration_box = QComboBox()
        self.registration_box.addItems(REGISTRATION_CHOICES)
        self.registration_box.activated.connect(self._registration_chosen)
        self.bead_file = None
        self.positivity_box = QComboBox()
        self.positivity_box.addItems(POSITIVITY_CHOICES)
        form.addRow("PSF sigma (px)", self.sigma)
        form.addRow("False positives / field", self.fp)
        form.addRow("Threshold", self.auto)
        form.addRow("Manual threshold (photons)", self.thr)
        form.addRow("Camera offset (ADU)", self.offset)
        form.addRow("Camera gain (ADU/e-)", self.gain)
        form.addRow("Channel match radius (px)", self.radius)
        form.addRow("Channel registration", self.registration_box)
        form.addRow("Positive when", self.positivity_box)
        lay.addLayout(form)
        self.run_btn = QPushButton("Detect in current field")
        self.run_btn.clicked.connect(self.run)
        lay.addWidget(self.run_btn)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["phenotype", "vesicles", "fraction"])
        lay.addWidget(self.table)
        from ._legend import PhenotypeLegend

        self.legend = PhenotypeLegend()
        lay.addWidget(self.legend)
        exp_btn = QPushButton("Export parameters to experiment file…")
        exp_btn.clicked.connect(self._export_dialog)
        lay.addWidget(exp_btn)
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self.layer_box.currentIndexChanged.connect(self._layer_chosen)
        self._refresh()

    # ------------------------------------------------------------ layers
    def _image_layers(self):
        return [ly for ly in self.viewer.layers if _meta(ly).get("kind") == "image"]

    def _refresh(self, *_):
        names = [ly.name for ly in self._image_layers()]
        if names == [self.layer_box.itemText(i) for i in range(self.layer_box.count())]:
            return
        cur = self.layer_box.currentText()
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.addItems(names)
        if cur in names:
            self.layer_box.setCurrentText(cur)
        self.layer_box.blockSignals(False)
        self._layer_chosen()

    def _layer_chosen(self, *_):
        """Take defaults from the experiment file next to the images, when there is one."""
        from .._reader import find_experiment

        ly = self.current_layer()
        if ly is None:
            return
        files = _meta(ly).get("files") or []
        exp = find_experiment(files[0]) if files else None
        if exp is None or exp == self.experiment_file:
            return
        self.experiment_file = exp
        try:
            from evflow.pipeline.config import load_experiment

            img = load_experiment(exp, check_files=False).imaging
        except Exception:  # noqa: BLE001 - keep the current values
            return
        self.experiment_imaging = dict(img)
        p = DetectionParameters.from_experiment(img)
        self.set_parameters(p)

    def current_layer(self):
        name = self.layer_box.currentText()
        return next((ly for ly in self._image_layers() if ly.name == name), None)

    def channel_layers(self):
        """The layers of all channels of the chosen layer's source, in channel order."""
        ly = self.current_layer()
        m = _meta(ly)
        same = [x for x in self._image_layers() if _meta(x).get("source") == m.get("source")
                and _meta(x).get("files") == m.get("files")]
        same.sort(key=lambda x: _meta(x)["channel"])
        return same

    # ------------------------------------------------------------ parameters
    def parameters(self) -> DetectionParameters:
        return DetectionParameters(
            psf_sigma_px=self.sigma.value(), false_positives=self.fp.value(),
            detection_threshold_photons=None if self.auto.isChecked() else self.thr.value(),
            camera_offset=self.offset.value(), camera_gain=self.gain.value(), match_radius_px=self.radius.value(),
            base=self.experiment_imaging)

    def _registration_chosen(self, *_):
        if self.registration_box.currentText() == "bead field…":
            path, _ = QFileDialog.getOpenFileName(self, "Registration-bead field", str(self.experiment_file or ""),
                                                  "TIFF (*.tif *.tiff)")
            if path:
                self.set_registration_source(path)

    def set_registration_source(self, source):
        """``"experiment beads"``, ``"fit on this field"``, ``"none"`` or the path of a bead field."""
        if source in REGISTRATION_CHOICES:
            self.registration_box.setCurrentText(source)
        else:
            self.bead_file = str(source)
            self.registration_box.setCurrentText("bead field…")

    def _registration_spec(self):
        """What :func:`detect_field` takes as ``registration`` for the current choice."""
        choice = self.registration_box.currentText()
        if choice == "experiment beads":
            beads = self.experiment_imaging.get("registration_beads")
            if beads and self.experiment_file is not None:
                from evflow.pipeline.config import load_experiment

                return str(load_experiment(self.experiment_file, check_files=False).resolve(beads))
            return None
        if choice == "bead field…":
            return self.bead_file
        return "fit" if choice == "fit on this field" else None

    def set_parameters(self, p: DetectionParameters):
        self.sigma.setValue(p.psf_sigma_px)
        self.fp.setValue(p.false_positives)
        self.auto.setChecked(p.detection_threshold_photons is None)
        if p.detection_threshold_photons is not None:
            self.thr.setValue(p.detection_threshold_photons)
        self.offset.setValue(p.camera_offset)
        self.gain.setValue(p.camera_gain)
        self.radius.setValue(p.match_radius_px)

    def current_field_index(self):
        """The viewer's position on the chosen stack's leading axes (field, and time for a time-lapse), or
        None for a single 2-D field."""
        ly = self.current_layer()
        if ly is None or ly.ndim < 3:
            return None
        return tuple(int(i) for i in self.viewer.dims.current_step[:ly.ndim - 2])

    def current_field(self):
        """(channel, y, x) NumPy array of the current field of the chosen stack, and the marker names."""
        layers = self.channel_layers()
        f = self.current_field_index()
        planes = []
        for ly in layers:
            d = ly.data if f is None else ly.data[f]
            planes.append(np.asarray(d.compute() if hasattr(d, "compute") else d))
        return np.stack(planes), [ly.name if _meta(ly).get("markers") is None else _meta(ly)["markers"][_meta(ly)[
            "channel"]] for ly in layers]

    # ------------------------------------------------------------ run
    def run(self):
        """Detect in the current field in a worker thread (napari progress bar); returns the worker."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        from evflow.backend import gpu_available

        if self.current_layer() is None:
            self.status.setText("open a TIFF field or a results.zarr first")
            return None
        params = self.parameters()
        field_idx = self.current_field_index()
        backend = "cupy" if gpu_available() else "numpy"
        field, markers = self.current_field()
        # The progress bar is a Qt object: it is created, advanced and closed in the GUI
        # thread only (touching it from the worker thread crashes Qt); the worker reports
        # each finished channel through a queued signal.
        pbar = progress(total=3, desc="evflow: detecting vesicles")
        self._channel_done.connect(lambda i: pbar.update(1))
        reg_spec = self._registration_spec()
        use_rule = self.positivity_box.currentText() == "experiment rule"
        exp_file = self.experiment_file
        img_s = params.imaging_settings(markers)

        def work():
            from evflow.imaging.camera import as_camera
            from evflow.pipeline.imaging import camera_of

            from .._detection import resolve_registration

            photons = as_camera(camera_of(img_s)).to_photons(field) if reg_spec == "fit" else None
            reg = resolve_registration(reg_spec, img_s, photons)
            thr = experiment_thresholds(exp_file, img_s, reg, backend=backend)[0] if use_rule else None
            return detect_field(field, markers, params, registration=reg, thresholds=thr, backend=backend,
                                progress=self._channel_done.emit), field.shape

        w = create_worker(work, _start_thread=False)
        w.returned.connect(lambda res: self._done(res, field_idx, params, backend))
        w.errored.connect(self._failed)
        self._workers.add(w)
        w.finished.connect(lambda w=w: self._workers.discard(w))
        self.run_btn.setEnabled(False)
        w.finished.connect(lambda: self.run_btn.setEnabled(True))
        w.finished.connect(lambda: (self._channel_done.disconnect(), pbar.close()))
        self.status.setText(f"detecting ({backend})…")
        w.start()
        return w

    def _failed(self, exc):
        self.error = f"{type(exc).__name__}: {exc}"
        self.status.setText(self.error)

    def _done(self, res, field_idx, params, backend):
        from .._reader import points_layer

        ves, shape = res
        markers = list(ves.attrs["markers"])
        tables = {m: ves[ves[f"detected_{m}"].to_numpy(bool)] for m in markers}
        self.vesicles, self.tables, self.error = ves, tables, None
        self.registration, self.thresholds = ves.attrs.get("registration"), ves.attrs.get("thresholds")
        self._register_layers()
        from evflow.schema import phenotype_labels

        labels = phenotype_labels(markers)
        df = ves.copy()
        lead = () if field_idx is None else field_idx
        if lead:
            df["field"] = lead[0]
            if len(lead) > 1:
                df["t"] = lead[1]
        df.attrs = {}
        coords, kw, _ = points_layer(df, name="vesicles (detected)", labels=labels, ndim=2,
                                     extra_meta={"parameters": params.as_dict(), "backend": backend})
        coords = np.column_stack([np.tile(np.asarray(lead, float), (len(coords), 1)), coords])  # the layer's frame
        ndim = coords.shape[1]
        kw.pop("ndim", None)
        old = next((ly for ly in self.viewer.layers if ly.name == kw["name"]), None)
        if old is not None:
            self.viewer.layers.remove(old)
        self.points_layer = self.viewer.add_points(coords, ndim=ndim, **kw)
        counts = np.bincount(ves["bitmask"].to_numpy(np.int64), minlength=len(labels)) if len(ves) else np.zeros(
            len(labels), int)
        self.table.setRowCount(len(labels))
        total = max(int(counts.sum()), 1)
        for i, lab in enumerate(labels):
            self.table.setItem(i, 0, QTableWidgetItem(lab))
            self.table.setItem(i, 1, QTableWidgetItem(str(int(counts[i]))))
            self.table.setItem(i, 2, QTableWidgetItem(f"{counts[i] / total:.3f}"))
        self.counts = dict(zip(labels, counts.tolist()))
        self.legend.set_phenotypes(kw["metadata"]["evflow"]["phenotype_colours"], self.counts)
        px = _meta(self.current_layer()).get("pixel_size_nm")
        if px is None and self.experiment_file is not None:
            try:
                from evflow.pipeline.config import load_experiment

                px = load_experiment(self.experiment_file, check_files=False).imaging.get("pixel_size_nm")
            except Exception:  # noqa: BLE001
                px = None
        h, w = shape[-2:]
        if px:
            area = h * w * (float(px) * 1e-3) ** 2
            dens = f"{len(ves) / area:.4f} vesicles/um^2"
        else:
            dens = f"{len(ves) / (h * w) * 1e4:.2f} vesicles per 10^4 px (pixel size unknown)"
        self.density_text = dens
        self.status.setText(f"{len(ves)} vesicles ({backend}); {dens}")
        self.detected.emit(ves)

    def _register_layers(self):
        """Give each channel layer the registration (channel px -> reference px) as its affine."""
        from .._reader import layer_affine

        for ly in self.channel_layers():
            m = _meta(ly)
            marker = (m.get("markers") or [ly.name])[m.get("channel", 0)]
            A = None
            if self.registration is not None:
                A = self.registration["transforms"].get(marker)
            ly.affine = layer_affine(A, ly.ndim)
            ly.metadata["evflow"]["registered"] = self.registration is not None

    # ------------------------------------------------------------ export
    def _export_dialog(self):
        start = str(self.experiment_file or "experiment.toml")
        path, _ = QFileDialog.getSaveFileName(self, "Experiment file", start, "TOML (*.toml)")
        if path:
            self.export(path)

    def export(self, path):
        """Write the parameters into the experiment file's ``[imaging]`` section."""
        return export_parameters(path, self.parameters())
