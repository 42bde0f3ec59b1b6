"""FCS reader and writer: every real file, independent cross-checks, layouts, bad input."""

from __future__ import annotations

import csv
import pickle
import struct
import warnings

import numpy as np
import pytest
from conftest import SHARED_DATA, shared_path
from fcs_builder import build_fcs, build_multi

import evflow
from evflow.errors import FCSError, FCSWarning
from evflow.io.fcs import count_data_sets, read_fcs_metadata

flowio = pytest.importorskip("flowio")


def _manifest():
    path = SHARED_DATA / "MANIFEST.tsv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


MANIFEST = _manifest()
#: files that are not readable as event data, and the error a user gets
UNREADABLE = {
    "fcs/fcsparser/corrupted/corrupted.fcs": "HEADER",
    "fcs/fcsparser/cytek-nl-2000/sample_header.fcs": "HEADER and TEXT only",
}
ALL_FILES = [row["path"] for row in MANIFEST] or ["(shared data absent)"]


def _read_quiet(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FCSWarning)
        return evflow.read_fcs(path, **kw)


def _flowio_data(path):
    """FlowIO's raw and preprocessed arrays, or None where FlowIO cannot read the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fd = flowio.FlowData(str(path), ignore_offset_error=True, ignore_offset_discrepancy=True)
            raw = fd.as_array(preprocess=False)
        except Exception:
            return None
        try:
            pre = fd.as_array(preprocess=True)
        except Exception:  # e.g. a $TIMESTEP that is not a number
            pre = None
        return raw, pre


def _struct_decode(path, sample):
    """Decode integer DATA value by value with struct: an oracle for layouts FlowIO cannot read."""
    meta = sample.meta
    order = "<" if meta["$BYTEORD"].replace(" ", "").startswith("1") else ">"
    widths = [int(meta[f"$P{i}B"]) // 8 for i in range(1, sample.n_channels + 1)]
    masks = []
    for i in range(1, sample.n_channels + 1):
        r = float(meta[f"$P{i}R"])
        nb = int(np.ceil(np.log2(r))) if r > 1 else 1
        masks.append((1 << nb) - 1 if nb < 8 * widths[i - 1] else None)
    raw = open(path, "rb").read()
    begin = int(meta["$BEGINDATA"]) if "$BEGINDATA" in meta else int(raw[26:34])
    out = np.empty((sample.n_events, sample.n_channels), dtype=np.uint64)
    pos = begin
    for e in range(sample.n_events):
        for c, w in enumerate(widths):
            b = raw[pos : pos + w]
            v = int.from_bytes(b, "little" if order == "<" else "big")
            out[e, c] = v if masks[c] is None else v & masks[c]
            pos += w
    return out


@pytest.mark.parametrize("rel", ALL_FILES)
def test_every_real_file(rel):
    path = shared_path(*rel.split("/"))
    row = next(r for r in MANIFEST if r["path"] == rel)
    if rel in UNREADABLE:
        with pytest.raises(FCSError) as err:
            _read_quiet(path)
        msg = str(err.value)
        assert str(path) in msg and UNREADABLE[rel] in msg
        return
    s = _read_quiet(path)
    if row["$TOT"].strip().isdigit():  # the manifest's own parser could not read every file
        assert s.n_events == int(row["$TOT"])
        assert s.n_channels == int(row["$PAR"])
        assert s.version == row["version"]
    assert s.n_channels == len(s.markers) == s.events.shape[1]
    a = s.to_numpy()
    assert a.shape == (s.n_events, s.n_channels)
    # the lazy path and the one-shot path agree, at an awkward chunk size too
    np.testing.assert_array_equal(np.asarray(_read_quiet(path, chunk_events=997).events.compute()), a)
    ref = _flowio_data(path)
    if ref is not None:
        raw, pre = ref
        np.testing.assert_array_equal(a.astype(np.float64), raw)
        if pre is not None:
            np.testing.assert_allclose(_read_quiet(path, scale=True).to_numpy(), pre, rtol=1e-12)
    else:
        # FlowIO reads only 8/16/32-bit integers: check 24-bit and multi-set files another way
        if row["$DATATYPE"] == "I" and "fake_large" not in rel and row["$NEXTDATA"] in ("0", ""):
            np.testing.assert_array_equal(a.astype(np.uint64), _struct_decode(path, s))


def test_24bit_files_are_read(shared_data):
    path = shared_path("beads", "flowcal", "sample001.fcs")
    s = _read_quiet(path)
    assert s.to_numpy().dtype == np.uint32
    assert s.meta["$P1B"] == "24"
    # 10-bit data in 24-bit words: the $PnR mask leaves values below 1024
    assert int(s.to_numpy().max()) <= 1023
    lin = _read_quiet(path, scale=True).to_numpy()
    fl1 = s.channel_index("FL1")
    # $PnE = 4.0,1.0: 10 ** (4 * x / 1024)
    np.testing.assert_allclose(lin[:, fl1], 10 ** (4.0 * s.to_numpy()[:, fl1] / 1024.0), rtol=1e-12)


def test_large_file_offsets_from_text(shared_data):
    # HEADER DATA offsets blank (as for files over 99,999,999 bytes): $BEGINDATA/$ENDDATA are used
    big = _read_quiet(shared_path("fcs", "fcsparser", "fake_large_fcs", "fake_large_fcs.fcs")).to_numpy()
    ref = _read_quiet(shared_path("fcs", "fcsparser", "Fortessa", "FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs"))
    np.testing.assert_array_equal(big, ref.to_numpy())


def test_two_data_sets_match_flowio(shared_data):
    path = shared_path("fcs", "flowio", "coulter.lmd")
    assert count_data_sets(path) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refs = flowio.read_multiple_data_sets(str(path), ignore_offset_error=True)
    assert len(refs) == 2
    for k, ref in enumerate(refs):
        s = _read_quiet(path, data_set=k)
        assert s.data_set == k
        np.testing.assert_array_equal(s.to_numpy().astype(np.float64), ref.as_array(preprocess=False))
        assert s.channels == list(ref.pnn_labels)
    with pytest.raises(FCSError, match="data_set=2"):
        _read_quiet(path, data_set=2)


def test_off_by_one_enddata_warns(shared_data):
    path = shared_path("fcs", "fcsparser", "MiltenyiBiotec", "FCS3.1", "EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs")
    with pytest.warns(FCSWarning, match="off-by-one"):
        s = evflow.read_fcs(path)
    assert s.n_events == 10000


def test_offset_discrepancy_warns_and_reads(shared_data):
    path = shared_path("fcs", "flowio", "data_start_offset_discrepancy_example.fcs")
    with pytest.warns(FCSWarning, match="HEADER"):
        s = evflow.read_fcs(path)
    ref = _flowio_data(path)[0]
    np.testing.assert_array_equal(s.to_numpy().astype(np.float64), ref)


def test_duplicate_channel_names_and_markers(shared_data):
    s = _read_quiet(shared_path("fcs", "fcsparser", "MiltenyiBiotec", "FCS3.1", "SG_2014-09-26_Duplicate_Names.fcs"))
    assert len(s.channels) == 9
    x = s.to_xarray()
    assert x.dims == ("event", "channel")
    assert list(x["channel"].values) == s.channels
    assert list(x["marker"].values) == [m or "" for m in s.markers]


def test_metadata_and_markers(shared_data):
    path = shared_path("fcs", "flowio", "100715.fcs")
    s = _read_quiet(path)
    assert s.meta["$TOT"].strip() == "65016"
    assert s.meta["$CYT"] == "Main Aria (FACSAria)"
    assert all(k == k.upper() for k in s.meta)
    assert s.channels[0] == "FSC-A"
    assert any(m for m in s.markers)
    idx = s.channel_index(next(m for m in s.markers if m))
    assert s.markers[idx]
    with pytest.raises(FCSError, match="no channel 'nope'"):
        s.channel_index("nope")
    assert read_fcs_metadata(path)["$PAR"] == s.meta["$PAR"]


def test_spillover_parsed(shared_data):
    s = _read_quiet(shared_path("fcs", "fcsparser", "FACS_Diva", "facs_diva_test.fcs"))
    sp = s.spillover
    assert sp.shape == (8, 8) and sp.dims == ("source", "detector")
    assert list(sp["source"].values)[:2] == ["FITC-A", "PE-A"]
    np.testing.assert_allclose(np.diag(sp.values), 1.0)
    assert sp.sel(source="FITC-A", detector="PE-A") == pytest.approx(0.1839, abs=1e-4)
    assert _read_quiet(shared_path("fcs", "flowio", "3FITC_4PE_004.fcs")).spillover is None


# --------------------------------------------------------------------------- synthetic layouts


@pytest.mark.parametrize(
    "datatype,bits,order,dtype",
    [
        ("I", [8, 8, 8], "<", np.uint8),
        ("I", [16, 16, 16], ">", np.uint16),
        ("I", [24, 24, 24], "<", np.uint32),
        ("I", [24, 24, 24], ">", np.uint32),
        ("I", [32, 32, 32], ">", np.uint32),
        ("I", [64, 64, 64], "<", np.uint64),
        ("I", [8, 16, 32], ">", np.uint32),
        ("I", [16, 24, 64], "<", np.uint64),
        ("F", [32, 32, 32], ">", np.float32),
        ("D", [64, 64, 64], "<", np.float64),
        ("A", [5, 6, 7], "<", np.float64),
    ],
)
def test_layouts_roundtrip(tmp_path, datatype, bits, order, dtype):
    rng = np.random.default_rng(0)
    vals = np.column_stack([rng.integers(0, min(2 ** min(b, 16), 10 ** min(b, 5)), 50) for b in bits])
    if datatype in "FD":
        vals = vals + 0.25
    p = tmp_path / "x.fcs"
    p.write_bytes(build_fcs(vals, datatype=datatype, bits=bits, order=order, ranges=[2**30] * 3))
    s = evflow.read_fcs(p, chunk_events=7)
    a = s.to_numpy()
    assert a.dtype == dtype
    np.testing.assert_array_equal(a, vals.astype(dtype))
    np.testing.assert_array_equal(s.events.compute(), a)


def test_pnr_bit_mask(tmp_path):
    vals = np.array([[0x1FFF, 5], [1024 + 7, 0xFFFF]])
    p = tmp_path / "m.fcs"
    p.write_bytes(build_fcs(vals, bits=[16, 16], ranges=[1024, 1000]))  # 10 bits each
    np.testing.assert_array_equal(evflow.read_fcs(p).to_numpy(), vals & 1023)


def test_multiple_data_sets_and_stext(tmp_path):
    a = np.arange(12).reshape(4, 3)
    b = np.arange(100, 110).reshape(5, 2)
    p = tmp_path / "multi.fcs"
    p.write_bytes(
        build_multi(
            [
                dict(values=a, stext={"SUPPLEMENTAL": "yes"}),
                dict(values=b, bits=[32, 32], order=">", version="FCS3.1"),
            ]
        )
    )
    assert count_data_sets(p) == 2
    s0, s1 = evflow.read_fcs(p, data_set=0), evflow.read_fcs(p, data_set=1)
    np.testing.assert_array_equal(s0.to_numpy(), a)
    np.testing.assert_array_equal(s1.to_numpy(), b)
    assert s0.meta["SUPPLEMENTAL"] == "yes"
    assert s1.version == "FCS3.1"


def test_text_escapes_and_delimiters(tmp_path):
    vals = np.ones((3, 2))
    p = tmp_path / "d.fcs"
    p.write_bytes(build_fcs(vals, delim="|", extra={"$FIL": "a|b||c", "note": "x/y"}))
    s = evflow.read_fcs(p)
    assert s.meta["$FIL"] == "a|b||c"
    assert s.meta["NOTE"] == "x/y"


def test_blank_header_data_offsets(tmp_path):
    vals = np.arange(20).reshape(10, 2)
    p = tmp_path / "h.fcs"
    p.write_bytes(build_fcs(vals, header_data_offsets=False))
    np.testing.assert_array_equal(evflow.read_fcs(p).to_numpy(), vals)


def test_sample_pickles_for_worker_processes(shared_data):
    s = _read_quiet(shared_path("fcs", "flowio", "G11.fcs"), chunk_events=1000)
    s2 = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(s2.events.compute(), s.to_numpy())
    assert s.events.name == _read_quiet(shared_path("fcs", "flowio", "G11.fcs"), chunk_events=1000).events.name
    assert s.events.numblocks == (6, 1)


# --------------------------------------------------------------------------- writer


def test_write_read_roundtrip_with_flowio(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(1000, 300, size=(5000, 4)).astype(np.float32)
    chans = ["FSC-A", "SSC-A", "FL1-A", "FL2/A"]
    p = tmp_path / "w.fcs"
    evflow.write_fcs(p, data, chans, markers=["", None, "CD63", "EpCAM"], meta={"$CYT": "evflow test", "SAMPLE": "a/b"})
    s = evflow.read_fcs(p)
    np.testing.assert_array_equal(s.to_numpy(), data)
    assert s.channels == chans
    assert s.markers == [None, None, "CD63", "EpCAM"]
    assert s.meta["$CYT"] == "evflow test" and s.meta["SAMPLE"] == "a/b"
    assert s.version == "FCS3.1"
    fd = flowio.FlowData(str(p))
    np.testing.assert_array_equal(fd.as_array(preprocess=False), data.astype(np.float64))
    assert list(fd.pnn_labels) == chans


def test_write_dask_and_copy_meta(tmp_path, shared_data):
    src = _read_quiet(shared_path("fcs", "flowio", "G11.fcs"), chunk_events=500)
    p = tmp_path / "copy.fcs"
    evflow.write_fcs(p, src.events.astype(np.float32), src.channels, src.markers, meta=src.meta)
    s = evflow.read_fcs(p)
    np.testing.assert_array_equal(s.to_numpy(), src.to_numpy().astype(np.float32))
    assert s.meta["$CYT"] == src.meta["$CYT"]
    assert s.meta["$PAR"] == str(src.n_channels)


def test_write_empty_and_bad_arguments(tmp_path):
    p = tmp_path / "e.fcs"
    evflow.write_fcs(p, np.zeros((0, 2)), ["A", "B"])
    assert evflow.read_fcs(p).n_events == 0
    with pytest.raises(FCSError, match="unique"):
        evflow.write_fcs(tmp_path / "x.fcs", np.zeros((3, 2)), ["A", "A"])
    with pytest.raises(FCSError, match=r"expected \(n_events, 3\)"):
        evflow.write_fcs(tmp_path / "x.fcs", np.zeros((3, 2)), ["A", "B", "C"])
    assert not (tmp_path / "x.fcs").exists()


# --------------------------------------------------------------------------- bad input


def _good_bytes(tmp_path):
    return build_fcs(np.arange(40).reshape(20, 2), bits=[16, 16])


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda b: b[:30], "HEADER"),
        (lambda b: b"XYZ" + b[3:], "not an FCS file"),
        (lambda b: b[:10] + b"   abc12" + b[18:], "TEXT begin"),
        (lambda b: b[:-5], "truncated"),
        (lambda b: b.replace(b"$TOT/20/", b"$TOT/90/"), r"\$TOT=90"),
        (lambda b: b.replace(b"$PAR/2/", b"$PAR/x/"), r"\$PAR"),
        (lambda b: b.replace(b"$MODE/L/", b"$MODE/C/"), r"\$MODE"),
        (lambda b: b.replace(b"$DATATYPE/I/", b"$DATATYPE/Q/"), r"\$DATATYPE"),
        (lambda b: b.replace(b"$BYTEORD/1,2,3,4/", b"$BYTEORD/3,4,1,2/"), r"\$BYTEORD"),
        (lambda b: b.replace(b"$P2B/16/", b"$P2B/72/"), r"\$P2B"),  # more than 64 bits (12 is read: 16-bit words)
        (lambda b: b.replace(b"$PAR/2/", b"$PAR/999999999/"), r"\$PAR"),
    ],
)
def test_bad_files_raise_fcs_error(tmp_path, mutate, match):
    p = tmp_path / "bad.fcs"
    p.write_bytes(mutate(_good_bytes(tmp_path)))
    with pytest.raises(FCSError, match=match) as err:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FCSWarning)
            evflow.read_fcs(p).to_numpy()
    assert str(p) in str(err.value)


def test_missing_and_directory(tmp_path):
    with pytest.raises(FCSError, match="not found"):
        evflow.read_fcs(tmp_path / "nope.fcs")
    with pytest.raises(FCSError, match="directory"):
        evflow.read_fcs(tmp_path)
    with pytest.raises(FCSError, match="chunk_events"):
        evflow.read_fcs(_write(tmp_path), chunk_events=0)


def _write(tmp_path):
    p = tmp_path / "ok.fcs"
    p.write_bytes(_good_bytes(tmp_path))
    return p


def test_truncated_real_files_never_crash(tmp_path, shared_data):
    path = shared_path("fcs", "fcsparser", "FACS_Diva", "facs_diva_test.fcs")
    src = path.read_bytes()
    data_end = int(read_fcs_metadata(path)["$ENDDATA"])
    for cut in (0, 1, 57, 58, 200, 1000, 3000, len(src) // 2, data_end):
        p = tmp_path / f"cut{cut}.fcs"
        p.write_bytes(src[:cut])
        with pytest.raises(FCSError):
            _read_quiet(p).to_numpy()


def test_struct_decoder_oracle_agrees_with_flowio(shared_data):
    # the oracle used above for 24-bit files is itself checked on a file FlowIO reads
    path = shared_path("fcs", "flowio", "3FITC_4PE_004.fcs")
    s = _read_quiet(path)
    raw, _ = _flowio_data(path)
    np.testing.assert_array_equal(_struct_decode(path, s)[:2000].astype(np.float64), raw[:2000])
    assert struct.calcsize("<H") == 2


def test_linear_events_equals_scaled_read(shared_data):
    path = shared_path("beads", "flowcal", "sample001.fcs")
    raw = _read_quiet(path, chunk_events=5000)
    scaled = _read_quiet(path, scale=True)
    np.testing.assert_array_equal(raw.linear_events().compute(), scaled.to_numpy())
    assert scaled.linear_events() is scaled.events
    assert raw.linear_events().dtype == np.float64


def test_different_chunkings_in_one_graph(shared_data):
    import dask

    path = shared_path("fcs", "flowio", "data1.fcs")
    a = _read_quiet(path, scale=True).events
    b = _read_quiet(path, scale=True, chunk_events=500).events
    assert a.name != b.name
    sa, sb = dask.compute(a.sum(axis=0), b.sum(axis=0))
    np.testing.assert_allclose(sa, sb, rtol=1e-12)


# --------------------------------------------------------------------------- the batch path: TEXT parse, lazy events

@pytest.mark.parametrize("delim", ["/", "|", "\x0c", "\t"])
@pytest.mark.parametrize("escaped", [False, True])
def test_text_parse_returns_the_keywords_written(delim, escaped):
    # a TEXT with no doubled delimiter takes the split fast path; one with a value holding the
    # delimiter (written doubled) takes the byte walk: both must give back exactly what was written
    from evflow.io.fcs.text import _parse_text

    rng = np.random.default_rng(len(delim) + escaped)
    alphabet = list("abcXYZ019 $.,-_:é℃µ")
    kw = {}
    for i in range(60):
        key = "$K" + "".join(rng.choice(alphabet[:9], 4)).strip() + str(i)
        kw[key.upper()] = "".join(rng.choice(alphabet, rng.integers(1, 12)))
    if escaped:
        kw["$COMMENT"] = f"a{delim}b{delim}{delim}c"
    raw = (delim + "".join(f"{k.replace(delim, delim * 2)}{delim}{v.replace(delim, delim * 2)}{delim}"
                           for k, v in kw.items())).encode("utf-8")
    assert _parse_text(raw, "t.fcs", "TEXT") == {k.strip(): v for k, v in kw.items()}
    # without the final delimiter the last value is kept; bytes that are not UTF-8 are read as Latin-1
    assert _parse_text(raw[:-1], "t.fcs", "TEXT") == {k.strip(): v for k, v in kw.items()}
    latin = raw + b"$X" + delim.encode() + "café".encode("latin-1") + delim.encode()
    assert _parse_text(latin, "t.fcs", "TEXT")["$X"] == "café"


def test_events_are_built_on_first_use_and_kept(tmp_path):
    rng = np.random.default_rng(0)
    ev = rng.gamma(2, 100, size=(5000, 3)).astype(np.float32)
    p = tmp_path / "a.fcs"
    evflow.write_fcs(p, ev, ["FSC-H", "SSC-H", "FL1-H"])
    s = evflow.read_fcs(p, chunk_events=1024)
    assert s.n_events == 5000 and s.__dict__.get("_events") is None  # HEADER and TEXT only, no graph yet
    np.testing.assert_array_equal(s.to_numpy(), ev)
    assert s.__dict__.get("_events") is None
    first = s.events
    assert s.events is first and first.chunks[0][:2] == (1024, 1024)
    np.testing.assert_array_equal(first.compute(), ev)
    assert first.name == evflow.read_fcs(p, chunk_events=1024).events.name  # the same graph name as before
    # a sample made from another with other events reads those events, not the file's
    import dataclasses

    keep = ev[:, 0] > 200
    sub = dataclasses.replace(s, events=s.events[keep])
    assert sub.n_events == int(keep.sum())
    np.testing.assert_array_equal(sub.to_numpy(), ev[keep])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(s)).to_numpy(), ev)
