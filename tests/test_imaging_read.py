"""read_images: lazy (fov, channel, y, x) fields from TIFF / OME-TIFF / ImageJ, camera model, bad input."""

import numpy as np
import pytest
import tifffile
from conftest import shared_path

import evflow
from evflow.errors import ImageError


def _data(shape, seed=0):
    return np.random.default_rng(seed).integers(100, 4000, shape, dtype=np.uint16)


def test_plain_tiffs_by_pattern_one_chunk_per_field(tmp_path):
    arrs = [_data((3, 40, 50), seed=i) for i in range(3)]
    for i, a in enumerate(arrs):
        tifffile.imwrite(tmp_path / f"field_{i}.tif", a, photometric="minisblack", metadata={"axes": "CYX"})
    im = evflow.read_images(str(tmp_path / "field_*.tif"), markers=["CD9", "CD63", "CD81"], pixel_size_nm=108)
    assert im.dims == ("fov", "channel", "y", "x") and im.shape == (3, 3, 40, 50)
    assert im.data.chunks == ((1, 1, 1), (3,), (40,), (50,))
    assert list(im.channel.values) == ["CD9", "CD63", "CD81"]
    assert im.attrs["pixel_size_nm"] == 108 and im.attrs["units"] == "ADU"
    np.testing.assert_array_equal(im.values, np.stack(arrs))
    assert im.file.values[2].endswith("field_2.tif")


def test_imagej_hyperstack_fields_and_calibration(tmp_path):
    a = _data((2, 3, 2, 32, 32))  # T Z C Y X
    tifffile.imwrite(tmp_path / "hs.tif", a, imagej=True, resolution=(1 / 0.1, 1 / 0.1),
                     metadata={"axes": "TZCYX", "unit": "um"})
    im = evflow.read_images(tmp_path / "hs.tif", markers=["A", "B"])
    assert im.shape == (6, 2, 32, 32)
    assert im.attrs["pixel_size_nm"] == pytest.approx(100.0)
    np.testing.assert_array_equal(im.values[4], a[1, 1])  # field = (t, z) in row-major order


def test_ome_tiff_pixel_size_and_camera(tmp_path):
    a = _data((2, 24, 24))
    tifffile.imwrite(tmp_path / "f.ome.tif", a, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.065,
                                                                   "PhysicalSizeXUnit": "µm"})
    im = evflow.read_images(tmp_path / "f.ome.tif", camera={"offset": 100, "gain": 2.0})
    assert im.attrs["pixel_size_nm"] == pytest.approx(65.0)
    assert im.attrs["units"] == "photons" and im.dtype == np.float32
    np.testing.assert_allclose(im.values[0], (a.astype(np.float32) - 100) / 2.0)


def test_channel_files_and_shared_deepblink_pair():
    c1 = shared_path("images", "deepblink", "image_c1.tif")
    c2 = shared_path("images", "deepblink", "image_c2.tif")
    im = evflow.read_images([(c1, c2)], markers=["c1", "c2"])
    assert im.shape == (1, 2, 512, 512)
    np.testing.assert_array_equal(im.values[0, 1], tifffile.imread(c2))


def test_shared_picasso_stack_needs_axes():
    p = shared_path("images", "picasso", "DERIVED_testdata_100x32x32_uint16.tif")
    # the ImageJ metadata calls the 100 frames channels: with one marker that is a clear error
    with pytest.raises(ImageError, match="channel axis has 100 entries"):
        evflow.read_images(p, markers=["DNA-PAINT"])
    im = evflow.read_images(p, axes="TYX", markers=["DNA-PAINT"])
    assert im.shape == (100, 1, 32, 32)


def test_spotiflow_fields_read_lazily():
    p = shared_path("images", "spotiflow", "img_terra_2d.tif")
    im = evflow.read_images(p)
    assert im.shape == (1, 1, 1024, 1024) and im.dtype == np.uint16
    assert im.attrs["pixel_size_nm"] is None
    assert int(im.isel(fov=0, channel=0).max()) == int(tifffile.imread(p).max())


def test_unreadable_truncated_and_missing(tmp_path):
    bad = tmp_path / "garbage.tif"
    bad.write_bytes(b"this is not a tiff file at all")
    with pytest.raises(ImageError, match="garbage.tif: not a readable TIFF"):
        evflow.read_images(bad)
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, _data((64, 64)))
    raw = good.read_bytes()
    trunc = tmp_path / "trunc.tif"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageError, match="trunc.tif: (truncated|not a readable)"):
        evflow.read_images(trunc)
    with pytest.raises(ImageError, match="file not found"):
        evflow.read_images(tmp_path / "nope.tif")
    with pytest.raises(ImageError, match="no files match"):
        evflow.read_images(str(tmp_path / "zzz*.tif"))
    # skip mode: the good field is kept, the others reported by name
    im = evflow.read_images([good, bad, trunc], on_error="skip")
    assert im.shape[0] == 1
    assert len(im.attrs["failed"]) == 2 and "garbage.tif" in im.attrs["failed"][0]


def test_axes_channels_and_pixel_size_errors(tmp_path):
    p = tmp_path / "c.tif"
    tifffile.imwrite(p, _data((3, 20, 20)), photometric="minisblack", metadata={"axes": "CYX"})
    with pytest.raises(ImageError, match="3 channel.*2 marker"):
        evflow.read_images(p, markers=["A", "B"])
    with pytest.raises(ImageError, match="letters but the image has 3"):
        evflow.read_images(p, axes="YX")
    with pytest.raises(ImageError, match="must contain Y and X"):
        evflow.read_images(p, axes="CTY")
    with pytest.raises(ImageError, match="pixel_size_nm must be > 0"):
        evflow.read_images(p, pixel_size_nm=0)
    # channels-last data read with its own axes string is reordered
    q = tmp_path / "yxc.tif"
    a = _data((20, 20, 3))
    tifffile.imwrite(q, a, photometric="rgb")
    im = evflow.read_images(q)
    assert im.shape == (1, 3, 20, 20)
    np.testing.assert_array_equal(im.values[0, 2], a[:, :, 2])
    # fields of different sizes
    r = tmp_path / "small.tif"
    tifffile.imwrite(r, _data((3, 10, 10)), photometric="minisblack", metadata={"axes": "CYX"})
    with pytest.raises(ImageError, match="small.tif: field shape"):
        evflow.read_images([p, r])


def test_implausible_stored_pixel_size_is_not_used():
    """A real ImageJ file stores 0.0023 nm pixels (XResolution 2147483646/5000 per um): read as unknown, warned."""
    import evflow
    from evflow.errors import EvflowWarning

    path = shared_path("images", "airlocalize", "2DsmFISH_humCells.tif")
    with pytest.warns(EvflowWarning, match="0.00233 nm, outside 1 nm - 100 um"):
        im = evflow.read_images(path)
    assert im.attrs["pixel_size_nm"] is None
    assert evflow.read_images(path, pixel_size_nm=65.0).attrs["pixel_size_nm"] == 65.0
    assert evflow.read_images(shared_path("images", "deepstorm", "ArtificialDataset_demo1.tif")).attrs[
        "pixel_size_nm"] == pytest.approx(100.0)


def test_scale_without_a_unit_of_length_is_not_a_pixel_size(tmp_path):
    """ImageJ's unit 'pixel' with a scale (deepblink's image_micron.tif: 0.3878 per pixel) is no size in the
    sample plane: read as unknown, and said so."""
    from evflow.errors import EvflowWarning

    p = tmp_path / "scaled.tif"
    tifffile.imwrite(p, _data((32, 32)), imagej=True, resolution=(2.5, 2.5), metadata={"unit": "pixel"})
    with pytest.warns(EvflowWarning, match="0.4 per pixel in unit 'pixel' is a scale with no unit of length"):
        im = evflow.read_images(p)
    assert im.attrs["pixel_size_nm"] is None
    tifffile.imwrite(p, _data((32, 32)), imagej=True, metadata={"unit": "pixel"})  # no scale: nothing to say
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evflow.read_images(p).attrs["pixel_size_nm"] is None
