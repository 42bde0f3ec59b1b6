"""ND2 / CZI / LIF go through bioio: a CZI written with Zeiss's libCZI (pylibCZIrw) is read with its channel
names, pixel size, time axis and every scene of its image data; a multi-position LIF (tests/lif_builder.py)
and ND2 (tests/nd2_builder.py) with their positions, frames and channels; and the scenes of a bioio file are fields (checked on a multi-position OME-TIFF
through bioio's own OME-TIFF reader, against evflow's reading of the same file)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
from lif_builder import write_lif
from nd2_builder import write_nd2

import evflow
from evflow.errors import EvflowWarning, ImageError
from evflow.io import images

pytest.importorskip("bioio")
pyczi = pytest.importorskip("pylibCZIrw.czi")
pytest.importorskip("bioio_czi")
pytest.importorskip("bioio_ome_tiff")
pytest.importorskip("bioio_lif")
pytest.importorskip("bioio_nd2")


def _czi(path, frames):
    data = np.random.default_rng(0).poisson(100, (frames, 2, 48, 64)).astype(np.uint16)
    data[:, 1, 10, 20] = 4000 + np.arange(frames)  # a bright pixel that tells the frames and channels apart
    with pyczi.create_czi(str(path), exist_ok=True) as f:
        for t in range(frames):
            for c in range(2):
                f.write(data[t, c], plane={"T": t, "C": c})
        f.write_metadata(document_name="chip", channel_names={0: "CD9", 1: "CD63"}, scale_x=1.08e-7, scale_y=1.08e-7)
    return data


def test_a_czi_file_is_read_with_its_channel_names_pixel_size_and_values(tmp_path):
    p = tmp_path / "field.czi"
    data = _czi(p, 1)
    im = evflow.read_images(p)
    assert im.dims == ("fov", "channel", "y", "x") and im.shape == (1, 2, 48, 64)
    assert list(im["channel"].values) == ["CD9", "CD63"]
    assert im.attrs["pixel_size_nm"] == pytest.approx(108.0)
    np.testing.assert_array_equal(np.asarray(im.values[0]), data[0])
    spots = evflow.detect_spots(np.asarray(im.values[0, 1], np.float32), psf_sigma_px=1.3)
    assert len(spots) == 0  # the bright single pixel is a hot pixel, repaired


def test_frames_of_a_czi_file_are_a_time_lapse_unless_asked_otherwise(tmp_path):
    p = tmp_path / "movie.czi"
    data = _czi(p, 3)
    im = evflow.read_images(p)
    assert im.dims == ("fov", "t", "channel", "y", "x") and im.shape == (1, 3, 2, 48, 64)
    np.testing.assert_array_equal(np.asarray(im.values[0, :, 1, 10, 20]), [4000, 4001, 4002])
    fields = evflow.read_images(p, t=False)
    assert fields.dims == ("fov", "channel", "y", "x") and fields.shape[0] == 3
    np.testing.assert_array_equal(np.asarray(fields.values), data)


def test_every_scene_of_a_czi_file_is_a_field_though_its_metadata_lists_one(tmp_path):
    # libCZI writes the scenes' subblocks but no Scenes list in the metadata, from which bioio takes the scenes:
    # bioio alone reads such a file as its first scene, silently
    data = np.random.default_rng(2).poisson(100, (3, 2, 2, 40, 56)).astype(np.uint16)  # scene, T, C, Y, X
    data[:, :, 0, 5, 7] = (1000 * np.arange(1, 4))[:, None] + np.arange(2)  # tells scenes and frames apart
    p = tmp_path / "positions.czi"
    with pyczi.create_czi(str(p), exist_ok=True) as f:
        for s in range(3):
            for t in range(2):
                for c in range(2):
                    f.write(data[s, t, c], plane={"T": t, "C": c}, scene=s, location=(1000 * s, 400 * s))
        f.write_metadata(document_name="chip", channel_names={0: "CD9", 1: "CD63"}, scale_x=1.08e-7,
                         scale_y=1.08e-7)
    from bioio import BioImage

    assert len(BioImage(p).scenes) == 1
    with pytest.warns(EvflowWarning, match="hold 3 scenes but its metadata lists 1"):
        im = evflow.read_images(p)
    assert im.dims == ("fov", "t", "channel", "y", "x") and im.shape == (3, 2, 2, 40, 56)
    assert im["series"].values.tolist() == [0, 1, 2] and list(im["channel"].values) == ["CD9", "CD63"]
    np.testing.assert_array_equal(np.asarray(im.values), data)
    np.testing.assert_allclose(im["stage_x_um"].values, [0, 108, 216])
    np.testing.assert_allclose(im["stage_y_um"].values, [0, 43.2, 86.4])
    with pytest.warns(EvflowWarning):
        fields = evflow.read_images(p, t=False)
    assert fields.shape == (6, 2, 40, 56) and fields["series"].values.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(np.asarray(fields.values), data.reshape(6, 2, 40, 56))


def test_a_one_scene_czi_file_is_read_through_bioio_without_a_word(tmp_path):
    p = tmp_path / "field.czi"
    _czi(p, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evflow.read_images(p).shape == (1, 2, 48, 64)


def test_every_position_of_a_lif_file_is_a_field_with_its_frames_and_channels(tmp_path):
    rng = np.random.default_rng(3)
    positions = [rng.poisson(100, (2, 2, 40, 56)).astype(np.uint16) for _ in range(3)]
    for k, a in enumerate(positions):
        a[:, 0, 5, 7] = 1000 * (k + 1) + np.arange(2)  # tells positions and frames apart
    p = tmp_path / "chip.lif"
    write_lif(p, positions)
    im = evflow.read_images(p)
    assert im.dims == ("fov", "t", "channel", "y", "x") and im.shape == (3, 2, 2, 40, 56)
    assert im["series"].values.tolist() == [0, 1, 2]
    assert list(im["channel"].values) == ["Green", "Red"]  # LAS X names a channel by its LUT
    assert im.attrs["pixel_size_nm"] == pytest.approx(108.0)
    np.testing.assert_array_equal(np.asarray(im.values), np.stack(positions))
    fields = evflow.read_images(p, t=False)
    assert fields.shape == (6, 2, 40, 56)
    np.testing.assert_array_equal(np.asarray(fields.values[:, 0, 5, 7]), [1000, 1001, 2000, 2001, 3000, 3001])


def test_every_position_of_an_nd2_file_is_a_field_at_its_stage_position(tmp_path):
    frames = np.random.default_rng(4).poisson(100, (2, 3, 2, 40, 56)).astype(np.uint16)  # T, P, C, Y, X
    frames[:, :, 0, 5, 7] = np.arange(2)[:, None] + 1000 * np.arange(1, 4)[None]  # tells positions and frames apart
    p = tmp_path / "chip.nd2"
    write_nd2(p, frames, positions_um=[(0.0, 0.0), (100.0, 0.0), (100.0, 80.0)])
    im = evflow.read_images(p)
    assert im.dims == ("fov", "t", "channel", "y", "x") and im.shape == (3, 2, 2, 40, 56)
    assert im["series"].values.tolist() == [0, 1, 2] and list(im["channel"].values) == ["CD9", "CD63"]
    assert im.attrs["pixel_size_nm"] == pytest.approx(108.0)
    assert im.attrs["frame_interval_s"] == pytest.approx(0.5)
    np.testing.assert_allclose(im["stage_x_um"].values, [0, 100, 100])
    np.testing.assert_allclose(im["stage_y_um"].values, [0, 0, 80])
    np.testing.assert_array_equal(np.asarray(im.values), frames.transpose(1, 0, 2, 3, 4))
    fields = evflow.read_images(p, t=False)
    assert fields.shape == (6, 2, 40, 56)
    np.testing.assert_array_equal(np.asarray(fields.values[:, 0, 5, 7]), [1000, 1001, 2000, 2001, 3000, 3001])


def test_a_chip_counts_the_same_from_an_nd2_file_as_from_its_fields_as_tiff(tmp_path):
    chip = evflow.synth.tirf((128, 128), n_fields=2, markers=("CD9", "CD63"), density_per_um2=0.3, seed=1)
    fields = np.asarray(chip.images.values).astype(np.uint16)  # fov, channel, y, x
    for f in range(2):
        tifffile.imwrite(tmp_path / f"fov{f}.tif", fields[f], metadata={"axes": "CYX"})
    write_nd2(tmp_path / "chip.nd2", fields[None], channels=("CD9", "CD63"))
    tiff = evflow.read_images(sorted(tmp_path.glob("fov*.tif")), markers=["CD9", "CD63"], pixel_size_nm=108.0)
    nd2 = evflow.read_images(tmp_path / "chip.nd2")
    by_tiff, _ = evflow.count_vesicles(tiff, sample="chip")
    by_nd2, _ = evflow.count_vesicles(nd2, sample="chip")
    assert by_nd2["count"].sum() > 50
    np.testing.assert_array_equal(by_nd2["count"].values, by_tiff["count"].values)


def test_scenes_of_a_bioio_file_are_fields(tmp_path, monkeypatch):
    data = np.random.default_rng(1).poisson(100, (3, 2, 40, 50)).astype(np.uint16)
    p = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(p, ome=True) as tw:
        for s in range(3):
            tw.write(data[s], metadata={"axes": "CYX", "Channel": {"Name": ["CD9", "CD63"]},
                                        "PhysicalSizeX": 0.108, "PhysicalSizeY": 0.108})
    own = evflow.read_images(p)
    monkeypatch.setattr(images, "BIOIO_SUFFIXES", (".tif",))  # the same file through bioio's OME-TIFF reader
    via = evflow.read_images(p)
    assert via.shape == own.shape == (3, 2, 40, 50)
    assert list(via["channel"].values) == list(own["channel"].values) == ["CD9", "CD63"]
    assert via["series"].values.tolist() == own["series"].values.tolist() == [0, 1, 2]
    assert via.attrs["pixel_size_nm"] == pytest.approx(own.attrs["pixel_size_nm"])
    np.testing.assert_array_equal(np.asarray(via.values), data)


@pytest.mark.parametrize("name, reader", [("broken.czi", "bioio"), ("broken.lif", "bioio"), ("broken.nd2", "nd2")])
def test_an_unreadable_bioio_file_is_an_image_error_naming_it(tmp_path, name, reader):
    p = tmp_path / name
    p.write_bytes(b"ZISRAWFILE" + b"\0" * 100)
    with pytest.raises(ImageError, match=f"{name}: {reader} cannot read it"):
        evflow.read_images(p)


def test_the_components_of_an_rgb_nd2_file_are_its_channels(tmp_path):
    frames = np.random.default_rng(5).poisson(50, (1, 2, 3, 16, 20)).astype(np.uint16)
    frames[:, :, 2] += 500
    write_nd2(tmp_path / "rgb.nd2", frames, channels=("Camera",), rgb=True)
    im = evflow.read_images(tmp_path / "rgb.nd2")
    assert im.dims == ("fov", "channel", "y", "x") and im.shape == (2, 3, 16, 20)
    np.testing.assert_array_equal(np.asarray(im.values), frames[0])


def test_a_truncated_nd2_file_is_an_image_error_naming_it(tmp_path):
    p = tmp_path / "cut.nd2"
    write_nd2(p, np.zeros((1, 2, 2, 16, 16), np.uint16))
    p.write_bytes(p.read_bytes()[:9000])  # the chunk map at the end is gone
    with pytest.raises(ImageError, match="cut.nd2: nd2 cannot read it"):
        evflow.read_images(p)


def test_evflow_info_describes_nd2_and_lif_files(tmp_path, capsys):
    from evflow.cli import main

    nd2 = tmp_path / "chip.nd2"
    write_nd2(nd2, np.zeros((2, 3, 2, 16, 20), np.uint16), positions_um=[(0.0, 5.0), (50.0, 5.0), (100.0, 9.0)])
    lif = tmp_path / "chip.lif"
    write_lif(lif, [np.zeros((1, 2, 16, 20), np.uint16)] * 2)
    assert main(["info", str(nd2), str(lif), str(tmp_path / "none.nd2")]) == 1
    out, err = capsys.readouterr()
    assert "ND2, 3 fields (positions)" in out and "C=2 x T=2 x Y=16 x X=20  (uint16)" in out
    assert "2 time points (frames of one field), 0.5 s apart" in out and "channels    2: CD9, CD63" in out
    assert "positions   x 0 to 100 um, y 5 to 9 um" in out and "pixel       108 nm" in out
    assert "LIF, 2 fields (positions)" in out and "channels    2: Green, Red" in out
    assert "positions   not stored" in out
    assert "none.nd2: file not found" in err


def test_an_experiment_runs_on_an_nd2_chip_as_on_its_fields_as_tiff(tmp_path):
    """The pipeline reads a field of an ND2 file (it took every image file for a TIFF, and every field failed)."""
    from evflow.pipeline import load_experiment, run

    chip = evflow.synth.tirf((96, 96), n_fields=3, markers=("CD9", "CD63"), density_per_um2=0.3, seed=1,
                             chromatic_shift=False)
    fields = np.asarray(chip.images.values).astype(np.uint16)
    write_nd2(tmp_path / "chip.nd2", fields[None], positions_um=[(0.0, 0.0), (200.0, 0.0), (400.0, 0.0)])
    for f in range(3):
        tifffile.imwrite(tmp_path / f"fov{f}.tif", fields[f], metadata={"axes": "CYX"})
    counts = {}
    for name, listed in (("nd2", '"chip.nd2"'), ("tiff", '"fov*.tif"')):
        (tmp_path / f"{name}.toml").write_text(
            '[imaging]\nchannels = ["CD9", "CD63"]\npixel_size_nm = 108.0\n\n'
            f'[[samples]]\nname = "S1"\nimages = [{listed}]\n')
        exp = load_experiment(tmp_path / f"{name}.toml")
        ds = run(exp, output=tmp_path / f"out_{name}", report=False, quiet=True)
        counts[name] = ds["image_count"].sel(image_sample="S1").values
        if name == "nd2":
            np.testing.assert_allclose(ds["image_stage_x_um"].values.ravel()[:3], [0, 200, 400])
    assert counts["nd2"].sum() > 40
    np.testing.assert_array_equal(counts["nd2"], counts["tiff"])
