"""Threshold rules: one grammar for the API and the experiment file, one set of statistics, identical numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import shared_path

import evflow
from evflow.errors import ConfigError, GatingError
from evflow.flow.controls import threshold_from_control
from evflow.flow.thresholds import (
    DEFAULT_PERCENTILE,
    DEFAULT_QUANTILE,
    RULE_FORMS,
    ThresholdRule,
    compute_threshold,
    experiment_rule,
    format_threshold_rule,
    parse_threshold_rule,
)
from evflow.imaging.count import thresholds_from_control
from evflow.pipeline.config import validate_experiment

V = np.random.default_rng(3).lognormal(4.0, 0.8, 5001)


def test_default_is_one_value():
    assert DEFAULT_PERCENTILE == 99.5 and DEFAULT_QUANTILE == 0.995
    r = experiment_rule({}, "thresholds", default="control_quantile")
    assert r == parse_threshold_rule("percentile 99.5 of isotype")
    assert threshold_from_control(V).channel_value == float(np.quantile(V, 0.995))
    assert thresholds_from_control(pd.DataFrame({"photons_A": V}), ["A"])["A"] == float(np.quantile(V, 0.995))


@pytest.mark.parametrize("text", ["percentile 99.5 of isotype", "percentile 99.9 of iso control",
                                  "percentile 0 of buffer", "percentile 12.3456789 of unstained",
                                  "mean+3sd of isotype", "mean+2.5sd of buffer", "mean+-1sd of x",
                                  "median+3mad of isotype", "median+0.1234567891mad of unstained"])
def test_format_parse_round_trip(text):
    r = parse_threshold_rule(text)
    assert isinstance(r, ThresholdRule) and r.text == text
    s = format_threshold_rule(r)
    assert s == text  # canonical already
    r2 = parse_threshold_rule(s)
    assert r2 == r and (r2.q, r2.n_sd, r2.control) == (r.q, r.n_sd, r.control)
    assert r2.statistic(V) == r.statistic(V)


def test_spelling_variants_and_dicts_are_the_same_rules():
    assert parse_threshold_rule("  P 99.5  of  isotype ") == parse_threshold_rule("percentile 99.5 of isotype")
    assert parse_threshold_rule("Mean + 3 sigma of iso") == parse_threshold_rule("mean+3sd of iso")
    assert parse_threshold_rule("median + 3 MAD of iso") == parse_threshold_rule({"rule": "median_mad", "n_mad": 3,
                                                                                 "control": "iso"})
    assert format_threshold_rule(parse_threshold_rule({"rule": "mean_sd", "n_sd": 2, "control": "b"})) == "mean+2sd of b"
    assert parse_threshold_rule("percentile 99.5 of iso") != parse_threshold_rule("percentile 99 of iso")


@pytest.mark.parametrize("bad", ["median of iso", "percentile of iso", "percentile 99 of", "mean+3 of iso",
                                 "top 1% of isotype", "percentile 150 of iso", "median+xmad of iso"])
def test_bad_rule_strings_name_the_string_and_the_forms(bad):
    with pytest.raises(GatingError) as exc:
        parse_threshold_rule(bad, "CD63")
    msg = str(exc.value)
    assert "marker 'CD63'" in msg and (repr(bad) in msg or "150" in msg)
    if "150" not in bad:
        assert RULE_FORMS in msg and "mean+<K>sd" in msg and "median+<K>mad" in msg
    with pytest.raises(ConfigError, match="'thresholds.rule'"):
        experiment_rule({"rule": bad}, "thresholds", default=None)
    with pytest.raises(ConfigError, match="the 'isotype' control"):
        threshold_from_control(V, rule=bad)


def test_statistics_are_stated_and_exact():
    med = np.median(V)
    assert compute_threshold(V, "percentile 99.5 of c") == float(np.percentile(V, 99.5))
    assert compute_threshold(V, "mean+3sd of c") == float(V.mean() + 3 * V.std())  # population SD
    assert compute_threshold(V, "median+3mad of c") == med + 3 * 1.4826 * float(np.median(np.abs(V - med)))
    assert compute_threshold(np.r_[V, np.nan, np.inf], "percentile 90 of c") == float(np.percentile(V, 90))
    with pytest.raises(ConfigError, match="no \\(finite\\) values"):
        compute_threshold([np.nan], "percentile 90 of c")
    with pytest.raises(ConfigError, match="is a number, not a rule"):
        compute_threshold(V, 5.0)


def test_old_functions_are_wrappers_with_identical_numbers():
    for q in (0.995, 0.99, 0.999, 0.07):
        t = threshold_from_control(V, role="isotype", quantile=q)
        assert t.channel_value == float(np.quantile(V, q))
        assert t.method == f"{100 * q:g}th percentile of isotype"
        assert thresholds_from_control(pd.DataFrame({"photons_A": V}), ["A"], quantile=q)["A"] == float(np.quantile(V, q))
    t = threshold_from_control(V, role="unstained", n_sd=3)
    assert t.channel_value == threshold_from_control(V, role="unstained", rule="median+3mad of unstained").channel_value
    assert t.method == "median + 3 robust SD of unstained"
    assert (threshold_from_control(V, rule="percentile 99.5 of isotype").channel_value
            == threshold_from_control(V, quantile=0.995).channel_value)
    with pytest.raises(ConfigError, match="quantile must be in"):
        threshold_from_control(V, quantile=99.5)


def test_experiment_rules_alias_and_strings():
    alias = experiment_rule({"rule": "control_quantile", "control": "buffer", "quantile": 0.999}, "thresholds",
                            default=None)
    assert alias.control == "buffer" and alias.quantile == 0.999
    assert alias.statistic(V) == float(np.quantile(V, 0.999))  # exactly the quantile asked for
    r = experiment_rule({"rule": "mean+3sd of unstained"}, "thresholds", default=None)
    assert r == ThresholdRule("mean_sd", "unstained", n_sd=3)
    assert experiment_rule({"rule": "fixed"}, "thresholds", default=None) == "fixed"
    assert experiment_rule({}, "imaging.thresholds", default="detected", keywords=("detected", "fixed")) == "detected"
    with pytest.raises(ConfigError, match=r"'thresholds.quantile' is 1.5, expected a number in \(0, 1\)"):
        experiment_rule({"rule": "control_quantile", "quantile": 1.5}, "thresholds", default=None)
    with pytest.raises(ConfigError, match="'thresholds.quantile' is given with the rule"):
        experiment_rule({"rule": "percentile 99 of isotype", "quantile": 0.99}, "thresholds", default=None)
    with pytest.raises(ConfigError, match="'thresholds.control' is 'buffer' but 'thresholds.rule'"):
        experiment_rule({"rule": "percentile 99 of isotype", "control": "buffer"}, "thresholds", default=None)
    with pytest.raises(ConfigError, match=r"'imaging.thresholds.rule' is '120', expected detected, fixed or"):
        experiment_rule({"rule": "120"}, "imaging.thresholds", default=None, keywords=("detected", "fixed"))


def _settings(thr, img_thr=None):
    s = {"flow": {"markers": {"FL1-H": "CD63"}, "flow_rate_ul_per_min": 1.0},
         "thresholds": thr,
         "samples": [{"name": "s", "flow": "s.fcs"}, {"name": "iso", "role": "isotype", "flow": "i.fcs"}]}
    if img_thr is not None:
        s["imaging"] = {"channels": ["CD9"], "thresholds": img_thr}
        s["samples"].append({"name": "chip", "role": "unstained", "images": ["c.tif"]})
    return s


def test_experiment_file_accepts_the_api_rule_strings():
    for thr in ({"rule": "percentile 99.5 of isotype"}, {"rule": "mean+3sd of isotype"},
                {"rule": "median+3mad of isotype", "control": "isotype"},
                {"rule": "control_quantile", "quantile": 0.99}, {}):
        validate_experiment(_settings(thr, {"rule": "percentile 99 of unstained"}), check_files=False)
    with pytest.raises(ConfigError) as exc:
        validate_experiment(_settings({"rule": "percentile 99.5 of buffer"}, {"rule": "top 1% of unstained"}),
                            check_files=False)
    msg = str(exc.value)
    assert "'thresholds.rule' 'percentile 99.5 of buffer' needs a flow sample with role 'buffer'" in msg
    assert "'imaging.thresholds.rule' is 'top 1% of unstained', expected detected, fixed or a control rule" in msg
    assert msg.startswith("2 problem(s)")
    with pytest.raises(ConfigError, match="'thresholds.rule' names control 'mystery', expected a role"):
        validate_experiment(_settings({"rule": "percentile 99 of mystery"}), check_files=False)


def test_api_and_experiment_file_give_identical_thresholds(tmp_path):
    """count_phenotypes with a rule string == the pipeline with the alias and with the same string."""
    data1 = shared_path("gatingml", "data1.fcs")
    api = evflow.count_phenotypes(data1, markers={"M1": ("FL1-H", "percentile 99.5 of iso"),
                                                  "M2": ("FL2-H", "percentile 99.5 of iso")},
                                  controls={"iso": data1})
    want = api["threshold"].values[0]
    sm = evflow.count_phenotypes(data1, markers={"M1": ("FL1-H", "median+3mad of iso")}, controls={"iso": data1})
    v = evflow.read_fcs(data1, scale=True).to_numpy()[:, 2]
    assert sm["threshold"].values[0, 0] == threshold_from_control(v, n_sd=3).channel_value
    for i, thr in enumerate(('rule = "control_quantile"\ncontrol = "isotype"\nquantile = 0.995',
                             'rule = "percentile 99.5 of isotype"')):
        exp = tmp_path / f"exp{i}.toml"
        exp.write_text(f'[flow]\nmarkers = {{ "FL1-H" = "M1", "FL2-H" = "M2" }}\n[thresholds]\n{thr}\n'
                       f'[[samples]]\nname = "d1"\nflow = "{data1}"\nvolume_ul = 1.0\n'
                       f'[[samples]]\nname = "iso"\nrole = "isotype"\nflow = "{data1}"\nvolume_ul = 1.0\n')
        ds = evflow.run(exp, output=tmp_path / f"out{i}", quiet=True)
        got = ds["threshold"].sel(sample="d1").values
        assert got.tolist() == want.tolist(), thr
        assert ds.attrs["threshold_rule"].startswith("99.5th percentile of the isotype control(s) (iso)")
