"""read_images on microscope files as they come: multi-position OME-TIFF, OME channel names and colours, stage
positions, OME time-lapse, per-page lazy reads (bytes read and peak memory against the file size)."""

import os
import tracemalloc

import numpy as np
import pytest
import tifffile
from conftest import shared_path

import evflow
from evflow.errors import ImageError

RED, GREEN = -16776961, 16711935  # OME Color: signed RGBA integers


def _positions(path, data, names=("CD9", "CD63"), colors=(RED, GREEN), axes="CYX", x0=100.0, extra=None):
    """An OME-TIFF with one series (stage position) per item of ``data``."""
    with tifffile.TiffWriter(path, ome=True) as tw:
        for k, a in enumerate(data):
            n_planes = int(np.prod(a.shape[:-2]))
            md = {"axes": axes, "Name": f"pos{k}", "PhysicalSizeX": 0.108, "PhysicalSizeY": 0.108,
                  "Plane": {"PositionX": [x0 + 50.0 * k] * n_planes, "PositionY": [20.0 - 10.0 * k] * n_planes}}
            if names is not None:
                md["Channel"] = {"Name": list(names)} | ({"Color": list(colors)} if colors else {})
            md.update(extra or {})
            tw.write(a, photometric="minisblack", metadata=md)


def _data(shape, seed=0):
    return np.random.default_rng(seed).integers(100, 4000, shape, dtype=np.uint16)


def test_multi_position_ome_tiff_is_several_fields(tmp_path):
    a = _data((3, 2, 32, 40))
    _positions(tmp_path / "chip.ome.tif", a)
    im = evflow.read_images(tmp_path / "chip.ome.tif")
    assert im.dims == ("fov", "channel", "y", "x") and im.shape == (3, 2, 32, 40)
    np.testing.assert_array_equal(im.values, a)
    assert list(im.channel.values) == ["CD9", "CD63"]
    assert list(im.channel_color.values) == ["#ff0000", "#00ff00"]
    assert list(im.series.values) == [0, 1, 2]
    np.testing.assert_allclose(im.stage_x_um.values, [100, 150, 200])
    np.testing.assert_allclose(im.stage_y_um.values, [20, 10, 0])
    assert im.attrs["pixel_size_nm"] == pytest.approx(108.0)
    assert im.data.chunks == ((1, 1, 1), (2,), (32,), (40,))
    # markers= still names the channels; a wrong count is an error naming the file
    assert list(evflow.read_images(tmp_path / "chip.ome.tif", markers=["a", "b"]).channel.values) == ["a", "b"]
    with pytest.raises(ImageError, match="chip.ome.tif: 2 channel.*3 marker"):
        evflow.read_images(tmp_path / "chip.ome.tif", markers=["a", "b", "c"])


def test_two_multi_position_files_and_a_glob(tmp_path):
    _positions(tmp_path / "s_a.ome.tif", _data((2, 2, 16, 16), 1))
    _positions(tmp_path / "s_b.ome.tif", _data((3, 2, 16, 16), 2))
    im = evflow.read_images(str(tmp_path / "s_*.ome.tif"))
    assert im.sizes["fov"] == 5 and list(im.series.values) == [0, 1, 0, 1, 2]
    assert [os.path.basename(f) for f in im.file.values] == ["s_a.ome.tif"] * 2 + ["s_b.ome.tif"] * 3
    # files whose OME channel names disagree cannot share one channel coordinate
    _positions(tmp_path / "other.ome.tif", _data((1, 2, 16, 16)), names=("CD81", "CD63"))
    with pytest.raises(ImageError, match="other.ome.tif: OME channel names .*CD81.* differ"):
        evflow.read_images([tmp_path / "s_a.ome.tif", tmp_path / "other.ome.tif"])


def test_positions_of_different_shapes_are_an_error(tmp_path):
    with tifffile.TiffWriter(tmp_path / "odd.ome.tif", ome=True) as tw:
        tw.write(_data((2, 16, 16)), photometric="minisblack", metadata={"axes": "CYX"})
        tw.write(_data((2, 16, 24)), photometric="minisblack", metadata={"axes": "CYX"})
    with pytest.raises(ImageError, match=r"odd.ome.tif: series 1 .*\(2, 16, 24\).*every field of a file"):
        evflow.read_images(tmp_path / "odd.ome.tif")


def test_ome_time_lapse_is_time_of_one_field(tmp_path):
    a = _data((5, 2, 16, 16))  # T C Y X
    tifffile.imwrite(tmp_path / "movie.ome.tif", a, ome=True, photometric="minisblack",
                     metadata={"axes": "TCYX", "TimeIncrement": 0.05, "Channel": {"Name": ["A", "B"]}})
    im = evflow.read_images(tmp_path / "movie.ome.tif")
    assert im.dims == ("fov", "t", "channel", "y", "x") and im.shape == (1, 5, 2, 16, 16)
    assert im.attrs["frame_interval_s"] == pytest.approx(0.05)
    assert list(im.channel.values) == ["A", "B"]
    np.testing.assert_array_equal(im.values[0], a)
    assert im.data.chunks[1] == (1,) * 5  # one chunk per time point
    # two positions of a time-lapse: two fields, each with its T axis
    _positions(tmp_path / "movies.ome.tif", [_data((4, 2, 8, 8), 3), _data((4, 2, 8, 8), 4)], axes="TCYX",
               extra={"TimeIncrement": 0.1})
    im2 = evflow.read_images(tmp_path / "movies.ome.tif")
    assert im2.shape == (2, 4, 2, 8, 8) and list(im2.stage_x_um.values) == [100.0, 150.0]


def _rchar():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io to count bytes read")
def test_one_field_of_a_large_file_reads_only_its_pages(tmp_path):
    n_pos = 40
    a = np.random.default_rng(5).integers(0, 60000, (n_pos, 2, 256, 256), dtype=np.uint16)
    path = tmp_path / "big.ome.tif"
    _positions(path, a)
    size = os.path.getsize(path)
    assert size > 10_000_000
    im = evflow.read_images(path)
    field_bytes = a[0].nbytes
    before = _rchar()
    tracemalloc.start()
    one = im.isel(fov=17).values
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    read = _rchar() - before
    np.testing.assert_array_equal(one, a[17])
    # one field is 1/40 of the pixels: what is read and held is a few fields' worth (the copies of stacking the
    # pages), not the file (reading the file whole reads and holds >= 40 fields' worth)
    assert read < 4 * field_bytes < size / 10, (read, size)
    assert peak < 8 * field_bytes < size / 5, (peak, size)
    # one plane of one field reads about one page
    before = _rchar()
    plane = im.isel(fov=3, channel=1).values
    np.testing.assert_array_equal(plane, a[3, 1])
    assert _rchar() - before < 3 * field_bytes


def test_shared_real_files_still_read():
    """Real single-series files: ImageJ stacks and plain TIFFs read as before, lazily, with no names."""
    p = shared_path("images", "airlocalize", "movie.tif")
    im = evflow.read_images(p, pixel_size_nm=100.0)
    assert im.sizes["fov"] == 120 and im.sizes["channel"] == 1 and list(im.channel.values) == ["ch0"]
    np.testing.assert_array_equal(im.isel(fov=7).values[0], tifffile.imread(p, key=7))
    assert "stage_x_um" not in im.coords and list(np.unique(im.series.values)) == [0]


# ---------------------------------------------------------------- experiment files: globs and multi-field files


def _experiment(tmp_path, images, channels=("CD9", "CD63")):
    chans = ", ".join(f'"{c}"' for c in channels)
    imgs = ", ".join(f'"{i}"' for i in images)
    p = tmp_path / "exp.toml"
    p.write_text(f'[imaging]\nchannels = [{chans}]\npixel_size_nm = 108.0\n\n'
                 f'[[samples]]\nname = "S1"\nimages = [{imgs}]\n')
    return p


def _chip(n_fields, seed):
    from evflow.synth import tirf

    return tirf((96, 96), n_fields=n_fields, markers=("CD9", "CD63"), density_per_um2=0.3, seed=seed,
                chromatic_shift=False)


def test_experiment_globs_and_multi_field_files_run_field_by_field(tmp_path):
    from evflow.pipeline import load_experiment, run

    syn = _chip(3, seed=1)
    raw = syn.images.values.astype(np.uint16)
    (tmp_path / "img").mkdir()
    _positions(tmp_path / "img" / "chip.ome.tif", raw[:2])
    tifffile.imwrite(tmp_path / "img" / "single.tif", raw[2], photometric="minisblack", metadata={"axes": "CYX"})
    exp = load_experiment(_experiment(tmp_path, ["img/*.tif"]))
    fields = exp.samples[0].images
    assert [getattr(f, "field", None) for f in fields] == [0, 1, None]
    assert [f.name for f in fields] == ["chip.ome.tif", "chip.ome.tif", "single.tif"]
    ds = run(exp, output=tmp_path / "out", report=False, quiet=True)
    counts = ds["image_count"].sel(image_sample="S1").values.sum(axis=-1)
    # each field of the multi-field file is its own field, counted as read alone
    from evflow.imaging.count import count_vesicles

    alone = [int(count_vesicles(evflow.read_images(tmp_path / "img" / "chip.ome.tif").isel(fov=[k]),
                                psf_sigma_px=1.3, detect_kwargs={"exclude_border_px": 2})[0]["count"].sum())
             for k in range(2)]
    assert counts[0] != counts[1] and list(counts[:2]) == alone


def test_every_image_problem_is_found_at_validation(tmp_path):
    from evflow.errors import ConfigError
    from evflow.pipeline import load_experiment

    raw = _chip(2, seed=2).images.values.astype(np.uint16)
    _positions(tmp_path / "good.ome.tif", raw)
    _positions(tmp_path / "three.ome.tif", np.concatenate([raw, raw[:, :1]], axis=1), names=("A", "B", "C"),
               colors=None)
    tifffile.imwrite(tmp_path / "small.tif", raw[0, :, :64, :64], photometric="minisblack", metadata={"axes": "CYX"})
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    tifffile.imwrite(tmp_path / "movie.ome.tif", np.stack([raw[0]] * 3), ome=True, photometric="minisblack",
                     metadata={"axes": "TCYX", "TimeIncrement": 0.1})
    p = _experiment(tmp_path, ["good.ome.tif", "three.ome.tif", "small.tif", "broken.tif", "movie.ome.tif",
                               "none_*.tif"])
    with pytest.raises(ConfigError) as exc:
        load_experiment(p)
    msg = str(exc.value)
    for e in ("'samples[0].images[1]' three.ome.tif: has 3 channel(s), 'imaging.channels' lists 2",
              "'samples[0].images[3]' broken.tif: ",
              "'samples[0].images[4]' movie.ome.tif: holds a time-lapse of 3 frames",
              "'samples[0].images[5]' pattern 'none_*.tif' matches no file",
              "sample 'S1': fields of different sizes: good.ome.tif is 96x96 px, small.tif is 64x64 px"):
        assert e in msg, f"missing {e!r} in:\n{msg}"
    assert "good.ome.tif:" not in msg
