"""The pipeline's field stage on a multi-position OME-TIFF chip: per-field tables identical to the kernels'.

The field body opens a multi-field file once per process (its page table and OME-XML parsed once) and hashes
it once; these tests prove the fields it reads and counts are the kernels' (read_images + phenotype_field on
the same pixels), whatever the order the fields are asked for, and that a rewritten file is read again.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

MARKERS = ["CD9", "CD63", "CD81"]
IMG_S = {"channels": MARKERS, "pixel_size_nm": 108.0, "psf_sigma_px": 1.3, "camera_offset": 100.0,
         "camera_gain": 2.0}


def _chip(path, n_fields, seed=0, size=96):
    """A multi-position OME-TIFF of ``n_fields`` synthetic 3-colour fields (uint16 ADU) and the raw fields."""
    import tifffile

    from evflow.synth import tirf

    syn = tirf(shape=(size, size), n_fields=n_fields, markers=MARKERS, n_vesicles=25, photons=1500.0, offset=100.0,
               gain=2.0, min_separation_px=6.0, edge_margin_px=4.0, seed=seed)
    raw = syn.images.values
    with tifffile.TiffWriter(path, ome=True) as tw:
        for k in range(n_fields):
            tw.write(raw[k], photometric="minisblack", metadata={
                "axes": "CYX", "Name": f"pos{k}", "PhysicalSizeX": 0.108, "PhysicalSizeY": 0.108,
                "Channel": {"Name": MARKERS}, "Plane": {"PositionX": [10.0 * k] * 3, "PositionY": [5.0] * 3}})
    return raw


def _kernel_table(raw):
    """The kernels alone: camera model, then detect_spots in every channel + colocalisation (phenotype_field)."""
    from evflow.imaging.camera import Camera
    from evflow.imaging.count import phenotype_field

    ph = Camera(offset=100.0, gain=2.0).to_photons(raw)
    return phenotype_field(ph, MARKERS, psf_sigma_px=1.3, merge_radius_px=1.5,
                           detect_kwargs={"false_positives": 0.1, "exclude_border_px": 2,
                                          "saturation": float((65535 - 100.0) / 2.0)})


def _fields(path, n):
    from evflow.pipeline.image_inputs import FieldPath

    return [FieldPath(path, field=k, n_fields=n) for k in range(n)]


def test_field_items_equal_kernels_on_multiposition_chip(tmp_path):
    from evflow.pipeline.imaging import field_item
    from evflow.pipeline.store import file_sha256

    path = tmp_path / "chip.ome.tif"
    raw = _chip(path, 4)
    fps = _fields(path, 4)
    order = [2, 0, 3, 1, 2]  # out of order, one field twice (the file is opened once, then reused)
    items = {k: field_item(fps[k], img_s=IMG_S, registration=None, thresholds=None, backend="numpy") for k in order}
    digest = file_sha256(path)
    for k, it in items.items():
        kt = _kernel_table(raw[k])
        assert len(kt) > 5
        np.testing.assert_array_equal(it["y"], kt["y"].to_numpy())
        np.testing.assert_array_equal(it["x"], kt["x"].to_numpy())
        np.testing.assert_array_equal(it["bitmask"], kt["bitmask"].to_numpy())
        for c, m in enumerate(MARKERS):
            np.testing.assert_array_equal(it["photons_marker"][:, c], kt[f"photons_{m}"].to_numpy())
            np.testing.assert_array_equal(it["detected_marker"][:, c], kt[f"detected_{m}"].to_numpy())
        np.testing.assert_array_equal(it["counts"], np.bincount(kt["bitmask"], minlength=8))
        assert it["sha256"] == digest
        assert it["stage_um"] == [10.0 * k, 5.0]
        assert {"read", "detect", "register", "colocalise", "qc", "hash"} <= set(it["stage_s"])
        assert all(v >= 0 for v in it["stage_s"].values())


def test_field_item_equals_in_memory_analysis(tmp_path):
    """The file path (cached open, saturation from the file's dtype) and the in-memory path (napari's) agree."""
    from evflow.imaging.camera import Camera
    from evflow.pipeline.imaging import analyse_photons, field_array, field_item, saturation_photons

    path = tmp_path / "chip.ome.tif"
    raw = _chip(path, 2, seed=3)
    for k, fp in enumerate(_fields(path, 2)):
        it = field_item(fp, img_s=IMG_S, registration=None, thresholds=None, backend="numpy")
        ph = Camera(offset=100.0, gain=2.0).to_photons(raw[k])
        ref = analyse_photons(field_array(ph, IMG_S), IMG_S, None, saturation=saturation_photons(IMG_S, raw.dtype))
        for key in ("y", "x", "bitmask", "photons", "sigma", "photons_marker", "background_marker", "counts",
                    "thumbnail"):
            np.testing.assert_array_equal(it[key], ref[key])
        np.testing.assert_equal(it["qc"], ref["qc"])  # NaN where both have none


def test_rewritten_file_is_read_again(tmp_path):
    """A file rewritten in place (new size or modification time) is opened and hashed again, never served stale."""
    from evflow.pipeline.imaging import field_item
    from evflow.pipeline.store import file_sha256

    path = tmp_path / "chip.ome.tif"
    _chip(path, 2, seed=1)
    first = field_item(_fields(path, 2)[1], img_s=IMG_S, registration=None, thresholds=None, backend="numpy")
    raw = _chip(path, 3, seed=2)  # other fields, one more position
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a distinct mtime even on coarse clocks
    again = field_item(_fields(path, 3)[1], img_s=IMG_S, registration=None, thresholds=None, backend="numpy")
    assert again["sha256"] == file_sha256(path) != first["sha256"]
    kt = _kernel_table(raw[1])
    np.testing.assert_array_equal(again["y"], kt["y"].to_numpy())
    assert not (len(first["y"]) == len(again["y"]) and np.array_equal(first["y"], again["y"]))


def test_field_beyond_the_file_is_an_image_error(tmp_path):
    from evflow.errors import ImageError
    from evflow.pipeline.image_inputs import FieldPath
    from evflow.pipeline.imaging import read_field

    path = tmp_path / "chip.ome.tif"
    _chip(path, 2, seed=4)
    with pytest.raises(ImageError, match="holds 2 fields, field 5"):
        read_field(FieldPath(path, field=5, n_fields=2), IMG_S)


def test_photon_noise_in_a_run_is_the_kernels_with_the_camera_in_photons(tmp_path):
    """``noise_model = "photon"``: the field stage passes the camera model (in photons) to detection, and its
    table equals the kernels' given the same; the QC's noise_excess is there because the gain is stated."""
    from evflow.imaging.camera import Camera
    from evflow.imaging.count import phenotype_field
    from evflow.pipeline.imaging import field_item

    path = tmp_path / "chip.ome.tif"
    raw = _chip(path, 2, seed=5)
    img_s = dict(IMG_S, noise_model="photon")
    cam = Camera(offset=100.0, gain=2.0)
    for k, fp in enumerate(_fields(path, 2)):
        it = field_item(fp, img_s=img_s, registration=None, thresholds=None, backend="numpy")
        kt = phenotype_field(cam.to_photons(raw[k]), MARKERS, psf_sigma_px=1.3, merge_radius_px=1.5,
                             detect_kwargs={"false_positives": 0.1, "exclude_border_px": 2, "noise": "photon",
                                            "camera": cam.in_photons(),
                                            "saturation": float((65535 - 100.0) / 2.0)})
        assert len(kt) > 5
        np.testing.assert_array_equal(it["bitmask"], kt["bitmask"].to_numpy())
        np.testing.assert_array_equal(it["y"], kt["y"].to_numpy())
        assert all(0.9 < v < 1.3 for v in it["qc"]["noise_excess"]), it["qc"]["noise_excess"]


def test_photon_noise_needs_the_camera_gain_in_the_experiment(tmp_path):
    from evflow.errors import ConfigError
    from evflow.pipeline import load_experiment

    path = tmp_path / "chip.ome.tif"
    _chip(path, 1)
    (tmp_path / "exp.toml").write_text('[imaging]\nchannels = ["CD9", "CD63", "CD81"]\nnoise_model = "photon"\n\n'
                                       '[[samples]]\nname = "S1"\nimages = ["chip.ome.tif"]\n')
    with pytest.raises(ConfigError, match=r"imaging.noise_model.*photon.*imaging.camera_gain"):
        load_experiment(tmp_path / "exp.toml")
