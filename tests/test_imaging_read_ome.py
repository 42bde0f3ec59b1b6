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
