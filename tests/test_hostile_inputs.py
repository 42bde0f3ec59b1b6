"""Malformed and hostile inputs end in evflow errors (naming file and keyword) or in a warned, correct read;
never in a raw Python exception, a silent loss or unbounded work."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fcs_builder import build_fcs, build_multi

import evflow
from evflow.cli import main
from evflow.errors import FCSDataError, FCSError, FCSTextError, FCSWarning


def _write(tmp_path, blob, name="f.fcs"):
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def test_fixed_ascii_blank_or_text_field_is_fcs_error(tmp_path):
    vals = np.array([[1, 2], [3, 4]])
    for bad in (b"   1   2    \x00   4", b"   1   2 abc   4"):
        p = _write(tmp_path, build_fcs(vals, datatype="A", bits=[4, 4], data_bytes=bad))
        with pytest.raises(FCSDataError, match=r"parameter 1 \(\$P1B=4\).*expected a number") as exc:
            evflow.read_fcs(p).to_numpy()
        assert str(p) in str(exc.value)


def test_spillover_overflow_is_fcs_error():
    from evflow.io.fcs import parse_spillover

    with pytest.raises(FCSTextError, match=r"\$SPILLOVER"):
        parse_spillover("1e309,a,b,1,0,0,1")
    with pytest.raises(FCSTextError, match="non-finite"):
        parse_spillover("2,a,b,1,1e309,0,1")


def test_info_par_not_integer_one_line(tmp_path, capsys):
    blob = build_fcs(np.array([[1, 2], [3, 4]]), extra={"$PAR": "2.0"})
    p = _write(tmp_path, blob[:-3])  # and the DATA is truncated: info shows what the TEXT says
    assert main(["info", str(p)]) == 1
    cap = capsys.readouterr()
    assert "not readable" in cap.out and "channels    2" in cap.out and "Traceback" not in cap.err
    p = _write(tmp_path, build_fcs(np.array([[1, 2]]), extra={"$PAR": "x2"}), "g.fcs")
    assert main(["info", str(p)]) == 1
    assert "keyword $PAR is 'x2', expected an integer" in capsys.readouterr().err
    with pytest.raises(FCSError, match=r"\$PAR"):
        evflow.read_fcs(p)


def test_delimited_ascii_without_tot_reads_every_event(tmp_path):
    blob = build_fcs(np.zeros((3, 3)), datatype="A", bits=[8, 8, 8], version="FCS2.0",
                     data_bytes=b"1,2,3 4,5,6\n7,8,9",
                     extra={"$P1B": "*", "$P2B": "*", "$P3B": "*"})
    assert b"/$TOT/3/" in blob
    blob = blob.replace(b"/$TOT/3/", b"/$XOT/3/")  # no $TOT (optional in FCS 2.0)
    p = _write(tmp_path, blob)
    np.testing.assert_array_equal(evflow.read_fcs(p).to_numpy(), [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    p2 = _write(tmp_path, blob.replace(b"7,8,9", b"7,8  "), "g.fcs")
    with pytest.warns(FCSWarning, match="not a multiple of"):
        np.testing.assert_array_equal(evflow.read_fcs(p2).to_numpy(), [[1, 2, 3], [4, 5, 6]])


def test_info_walks_nextdata_chain_once(tmp_path, monkeypatch, capsys):
    import evflow.io.fcs.text as F  # where the chain walk looks the reader up

    n = 25
    blob = build_multi([{"values": np.full((2, 2), k), "datatype": "I"} for k in range(n)])
    p = _write(tmp_path, blob)
    calls = []
    orig = F._read_data_set_info
    monkeypatch.setattr(F, "_read_data_set_info", lambda *a, **k: calls.append(1) or orig(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert out.count("[data set ") == n and f"[data set {n} of {n}]" in out
    assert len(calls) == n  # each data set's HEADER and TEXT read once (not 1 + 2 + ... + n)
    calls.clear()
    assert evflow.read_fcs(p, data_set=n - 1).to_numpy()[0, 0] == n - 1  # outside info: no cache
    assert len(calls) == n


# ---------------------------------------------------------------- Gating-ML: bounded work, no recursion

GML = ('<?xml version="1.0"?>{dtd}<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating" '
       'xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes">{body}</gating:Gating-ML>')


def _rect(gid, parent=None):
    par = f' gating:parent_id="{parent}"' if parent else ""
    return (f'<gating:RectangleGate gating:id="{gid}"{par}><gating:dimension gating:compensation-ref="FCS" gating:min="1" gating:max="9">'
            '<data-type:fcs-dimension data-type:name="a"/></gating:dimension></gating:RectangleGate>')


def test_gatingml_entities_refused():
    from evflow.errors import GatingError
    from evflow.flow.gatingml import parse_gatingml

    dtd = ('<!DOCTYPE g [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
           '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>')
    with pytest.raises(GatingError, match="entity 'a'"):
        parse_gatingml(GML.format(dtd=dtd, body="&c;" + _rect("A")))


def test_gatingml_deep_nesting_and_many_elements(monkeypatch):
    import evflow.flow.gatingml as G
    from evflow.errors import GatingError

    body = "<w>" * 5000 + _rect("A") + "</w>" * 5000  # foreign wrappers 5,000 deep: no RecursionError
    s = G.parse_gatingml(GML.format(dtd="", body=body))
    assert s.gate_ids == ["A"]
    monkeypatch.setattr(G, "MAX_ELEMENTS", 100)
    with pytest.raises(GatingError, match="more than 100 elements"):
        G.parse_gatingml(GML.format(dtd="", body="<w/>" * 200))


def test_gatingml_text_joined_once():
    from evflow.flow.gatingml import _parse_tree

    text = GML.format(dtd="", body="<w>" + "x&amp;" * 20000 + "<v/>" + "y" * 10 + "</w>")
    _p, root = _parse_tree("<s>", text)
    w = root[0]
    assert w.text == "x&" * 20000 and w[0].tail == "y" * 10


def test_gatingml_polygon_vertices_limited(monkeypatch):
    import evflow.flow.gatingml as G
    from evflow.errors import GatingError

    vert = '<gating:vertex><gating:coordinate data-type:value="1"/><gating:coordinate data-type:value="2"/></gating:vertex>'
    dim = '<gating:dimension gating:compensation-ref="FCS"><data-type:fcs-dimension data-type:name="{}"/></gating:dimension>'
    poly = ('<gating:PolygonGate gating:id="P">' + dim.format("a") + dim.format("b") + vert * 50
            + "</gating:PolygonGate>")
    monkeypatch.setattr(G, "MAX_VERTICES", 40)
    with pytest.raises(GatingError, match="50 vertices, more than the 40"):
        G.parse_gatingml(GML.format(dtd="", body=poly))


def test_gatingml_chain_resolved_in_linear_order_and_depth_limited(monkeypatch):
    import evflow.flow.gatingml as G
    from evflow.errors import GatingError

    n = 200
    # children before parents (the worst order for repeated passes): G199 <- ... <- G0
    body = "".join(_rect(f"G{i}", f"G{i - 1}" if i else None) for i in reversed(range(n)))
    s = G.parse_gatingml(GML.format(dtd="", body=body))
    assert s.gate_ids == [f"G{i}" for i in range(n)]  # parents first
    assert s.gates["G199"].parent == "G198"
    monkeypatch.setattr(G, "MAX_GATE_DEPTH", 50)
    with pytest.raises(GatingError, match="deeper than 50"):
        G.parse_gatingml(GML.format(dtd="", body=body))
    cyc = _rect("A", "C") + _rect("B", "A") + _rect("C", "B")
    with pytest.raises(GatingError, match="cycle"):
        G.parse_gatingml(GML.format(dtd="", body=cyc))


# ---------------------------------------------------------------- YAML and TIFF


def test_yaml_alias_bomb_refused(tmp_path):
    from evflow.errors import ConfigError
    from evflow.pipeline import load_experiment

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("experiment: {name: *a8}")
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="expand to more than"):
        load_experiment(p)


def test_tiff_declared_size_checked_before_reading(tmp_path, monkeypatch):
    import tifffile

    import evflow.io.images as I
    from evflow.errors import ImageError

    p = tmp_path / "f.tif"
    tifffile.imwrite(p, np.zeros((2, 64, 64), np.uint16), compression="zlib")
    assert evflow.read_images([str(p)]).shape[-2:] == (64, 64)
    monkeypatch.setenv("EVFLOW_MAX_IMAGE_BYTES", "10000")
    with pytest.raises(ImageError, match=r"declares \(2, 64, 64\) uint16 pixels = 0.00 GiB decoded, over the limit"):
        evflow.read_images([str(p)])
    monkeypatch.delenv("EVFLOW_MAX_IMAGE_BYTES")
    monkeypatch.setattr(I, "_available_memory", lambda: 1000)
    with pytest.raises(ImageError, match="only 0.00 GiB of memory is available"):
        evflow.read_images([str(p)])


def test_tiff_decoded_shape_must_match_declared(tmp_path):
    import tifffile

    from evflow.errors import ImageError
    from evflow.io.images import _read_tiff

    p = tmp_path / "f.tif"
    tifffile.imwrite(p, np.zeros((64, 64), np.uint16))
    with pytest.raises(ImageError, match=r"decoded pixels have shape \(64, 64\), but the TIFF declares \(3, 64, 64\)"):
        _read_tiff(str(p), (3, 64, 64))


# ---------------------------------------------------------------- experiment validation


def _exp(tmp_path, flow_extra="", thr="CD63: 100.0", sample_flow="s.fcs", top=""):
    d = tmp_path / "exp"
    d.mkdir(exist_ok=True)
    evflow.write_fcs(d / "s.fcs", np.ones((5, 2), np.float32), ["SSC-H", "FL1-H"])
    p = d / "exp.yaml"
    p.write_text(f"experiment: {{name: t{top}}}\nflow:\n  markers: {{FL1-H: CD63}}\n{flow_extra}"
                 f"thresholds: {{rule: fixed, values: {{{thr}}}}}\n"
                 f"samples:\n  - {{name: s, flow: '{sample_flow}', volume_ul: 2.0}}\n")
    return p


def test_nonsense_numbers_refused(tmp_path):
    from evflow.errors import ConfigError
    from evflow.pipeline import load_experiment

    with pytest.raises(ConfigError) as exc:
        load_experiment(_exp(tmp_path, "  flow_rate_ul_per_min: -3.0\n", thr="CD63: .nan"))
    msg = str(exc.value)
    assert "'flow.flow_rate_ul_per_min' is -3.0, expected a number > 0" in msg
    assert "'thresholds.values.CD63' is nan, expected a finite number" in msg
    load_experiment(_exp(tmp_path, "  flow_rate_ul_per_min: 3.0\n"))  # sensible values pass


def test_paths_climbing_out_refused_and_never_opened(tmp_path):
    from evflow.errors import ConfigError
    from evflow.pipeline import load_experiment

    secret = tmp_path / "secret.fcs"
    secret.write_text("root:x:0:0:secret:/root:/bin/bash\n" * 4)
    with pytest.raises(ConfigError) as exc:
        load_experiment(_exp(tmp_path, sample_flow="../secret.fcs"))
    assert "climbs out of the experiment's folder" in str(exc.value) and "root:x" not in str(exc.value)
    # allowed on request; the FCS error then does not show the file's bytes either
    with pytest.raises(ConfigError) as exc:
        load_experiment(_exp(tmp_path, sample_flow="../secret.fcs", top=", allow_outside_paths: true"))
    assert "not an FCS file" in str(exc.value) and "root:x" not in str(exc.value) and "bash" not in str(exc.value)
    # absolute paths are the user's explicit choice
    with pytest.raises(ConfigError, match="not an FCS file"):
        load_experiment(_exp(tmp_path, sample_flow=str(secret)))
