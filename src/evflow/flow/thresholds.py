"""Positivity thresholds from control distributions: one rule grammar, one set of statistics.

A threshold rule says which statistic of a negative control's values (a
marker channel over the control's events, or a marker's photons over the
vesicles of a control chip) is the positivity threshold.  The same rules are
written in the API (``count_phenotypes(markers=...)``,
:func:`evflow.threshold_from_control`, :func:`evflow.thresholds_from_control`)
and in the experiment file (``[thresholds] rule = ...``,
``[imaging.thresholds] rule = ...``):

``"percentile P of CONTROL"``
    The ``P``-th percentile, ``P`` in 0..100 (linear interpolation, as
    :func:`numpy.percentile`).  ``p`` or ``q`` may stand for ``percentile``.
``"mean+Ksd of CONTROL"``
    mean + ``K`` standard deviations; the SD is the population SD
    (``numpy.std``, ddof = 0).  ``std`` or ``sigma`` may stand for ``sd``.
``"median+Kmad of CONTROL"``
    median + ``K`` scaled MADs, the MAD being scaled to the SD of a normal
    distribution: ``1.4826 * median(|x - median(x)|)`` (R's ``mad()``).

``CONTROL`` names the control: a key of ``controls=`` in the API, a sample
role in the experiment file.  Only finite values count.  The dict forms
``{"rule": "percentile", "q": P, "control": ...}``,
``{"rule": "mean_sd", "n_sd": K, ...}`` and ``{"rule": "median_mad",
"n_mad": K, ...}`` are the same rules.

The default is the 99.5th percentile (:data:`DEFAULT_PERCENTILE`; as a
quantile, :data:`DEFAULT_QUANTILE`).  Older forms stay accepted as aliases
with identical numbers: ``quantile=q`` (0..1) in the functions, and
``rule = "control_quantile"`` with ``quantile = q`` and ``control = ROLE``
in the experiment file, both meaning the ``q`` quantile exactly
(:meth:`ThresholdRule.from_quantile`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np

from ..errors import ConfigError, GatingError

__all__ = [
    "DEFAULT_CONTROL",
    "DEFAULT_PERCENTILE",
    "DEFAULT_QUANTILE",
    "MAD_TO_SD",
    "RULE_FORMS",
    "ThresholdRule",
    "compute_threshold",
    "experiment_rule",
    "finite_values",
    "format_threshold_rule",
    "parse_threshold_rule",
]

#: the default threshold: this percentile (0..100) of the negative control
DEFAULT_PERCENTILE = 99.5
#: the same default as a quantile (0..1), for the ``quantile=`` aliases
DEFAULT_QUANTILE = DEFAULT_PERCENTILE / 100
#: the control role the experiment file's alias form uses by default
DEFAULT_CONTROL = "isotype"
#: scale of the MAD to the SD of a normal distribution (``median+Kmad``)
MAD_TO_SD = 1.4826

#: the accepted forms, as error messages list them
RULE_FORMS = "'percentile <P> of <control>' (P in 0..100), 'mean+<K>sd of <control>' or 'median+<K>mad of <control>'"

_KINDS = ("percentile", "mean_sd", "median_mad")


def _num(x: float) -> str:
    """Shortest text of ``x`` that reads back as the same float."""
    s = format(x, "g")
    return s if float(s) == x else repr(float(x))


class ThresholdRule:
    """A positivity threshold computed from a control's values.

    Parameters
    ----------
    rule : {'percentile', 'mean_sd', 'median_mad'}
        ``percentile``: the ``q``-th percentile; ``mean_sd``: mean + ``n_sd``
        population SDs; ``median_mad``: median + ``n_sd`` scaled MADs
        (:data:`MAD_TO_SD` x MAD).
    control : str
        The control: a name in ``controls=`` (API) or a sample role (experiment file).
    q : float
        Percentile, 0..100 (``percentile``).
    n_sd : float
        Number of SDs (``mean_sd``) or scaled MADs (``median_mad``).
    text : str, optional
        The rule as the user wrote it (default: :func:`format_threshold_rule`).
    """

    def __init__(self, rule: str, control: str, q: float | None = None, n_sd: float | None = None, text=None):
        if rule not in _KINDS:
            raise GatingError(f"threshold rule kind {rule!r} unknown; expected one of {', '.join(_KINDS)}")
        self.rule = rule
        self.control = control
        self.q = None if q is None else float(q)
        self.n_sd = None if n_sd is None else float(n_sd)
        self._quantile = None  # the exact quantile (0..1) when built from one
        self.text = text or self.describe()

    @classmethod
    def from_quantile(cls, quantile: float, control: str, text=None) -> ThresholdRule:
        """The ``quantile`` (0..1) rule, evaluated at exactly that quantile (``numpy.quantile``)."""
        r = cls("percentile", control, q=100.0 * float(quantile))
        r._quantile = float(quantile)
        if text:
            r.text = text
        return r

    @property
    def quantile(self) -> float | None:
        """The quantile (0..1) of a percentile rule (None for the other rules)."""
        if self.rule != "percentile":
            return None
        return self._quantile if self._quantile is not None else self.q / 100

    def for_control(self, control: str) -> ThresholdRule:
        """The same statistic applied to another control."""
        r = ThresholdRule(self.rule, control, q=self.q, n_sd=self.n_sd)
        r._quantile = self._quantile
        return r

    def describe(self) -> str:
        """The rule in the grammar of :func:`parse_threshold_rule` (see :func:`format_threshold_rule`)."""
        return format_threshold_rule(self)

    @property
    def statistic_name(self) -> str:
        """The statistic in words: ``"99.5th percentile"``, ``"mean + 3 SD"``, ``"median + 3 robust SD"``."""
        if self.rule == "percentile":
            return f"{self.q:g}th percentile"
        if self.rule == "mean_sd":
            return f"mean + {self.n_sd:g} SD"
        return f"median + {self.n_sd:g} robust SD"

    @property
    def method(self) -> str:
        """The statistic and the control in words (``"99.5th percentile of isotype"``)."""
        return f"{self.statistic_name} of {self.control}"

    def cache_key(self):
        """What identifies the statistic (not the control): the quantile of a percentile rule, else the rule text."""
        if self.rule == "percentile":
            return self.quantile
        return format_threshold_rule(self.for_control(""))

    def statistic(self, values: np.ndarray) -> float:
        """The threshold of finite float64 ``values`` (at least one); no checks."""
        if self.rule == "percentile":
            if self._quantile is not None:
                return float(np.quantile(values, self._quantile))
            return float(np.percentile(values, self.q))
        if self.rule == "mean_sd":
            return float(values.mean() + self.n_sd * values.std())
        med = float(np.median(values))
        return med + self.n_sd * MAD_TO_SD * float(np.median(np.abs(values - med)))

    def compute(self, values, marker: str) -> float:
        """The threshold of a control's values (non-finite ones dropped) for ``marker``.

        Raises
        ------
        GatingError
            When the control has no finite value; the message names the marker, rule and control.
        """
        v = finite_values(values)
        if v.size == 0:
            raise GatingError(
                f"marker {marker!r}: threshold rule {self.text!r}: control {self.control!r} has no events with a "
                "finite value in the parent population"
            )
        return self.statistic(v)

    def __eq__(self, other):
        if not isinstance(other, ThresholdRule):
            return NotImplemented
        return (self.rule, self.control, self.q, self.n_sd, self.quantile) == (
            other.rule, other.control, other.q, other.n_sd, other.quantile)

    def __hash__(self):
        return hash((self.rule, self.control, self.q, self.n_sd))

    def __repr__(self):
        return f"ThresholdRule({self.text!r})"


def format_threshold_rule(rule: ThresholdRule) -> str:
    """The rule string of a :class:`ThresholdRule`; :func:`parse_threshold_rule` reads it back to an equal rule."""
    if rule.rule == "percentile":
        return f"percentile {_num(rule.q)} of {rule.control}"
    if rule.rule == "mean_sd":
        return f"mean+{_num(rule.n_sd)}sd of {rule.control}"
    return f"median+{_num(rule.n_sd)}mad of {rule.control}"


_NUMBER = r"[-+0-9.eE]+"
_RULE_RE = re.compile(
    rf"^\s*(?:(?P<pct>percentile|p|q)\s*(?P<q>{_NUMBER})"
    rf"|mean\s*\+\s*(?P<nsd>{_NUMBER})\s*(?:sd|std|sigma)"
    rf"|median\s*\+\s*(?P<nmad>{_NUMBER})\s*mad)\s+of\s+(?P<control>\S.*?)\s*$",
    re.IGNORECASE,
)


def parse_threshold_rule(rule, marker: str = "?", *, error=GatingError, where=None):
    """A threshold: a float (channel units) or a :class:`ThresholdRule`.

    Accepts a number, a rule string (``"percentile 99.5 of isotype"``,
    ``"mean+3sd of isotype"``, ``"median+3mad of isotype"``) or a dict
    ``{"rule": "percentile", "q": 99.5, "control": "isotype"}`` /
    ``{"rule": "mean_sd", "n_sd": 3, ...}`` / ``{"rule": "median_mad", "n_mad": 3, ...}``.

    Parameters
    ----------
    rule : number, str, dict or ThresholdRule
    marker : str
        Named in error messages (``marker 'CD63': ...``).
    error : type
        The error raised (:class:`GatingError`; the experiment file uses :class:`ConfigError`).
    where : str, optional
        Names the rule in error messages instead of ``marker <marker>`` (e.g. a key of the experiment file).

    Raises
    ------
    GatingError (or ``error``)
        If the rule cannot be understood; the message names the marker, the rule and the accepted forms.
    """
    who = where or f"marker {marker!r}"
    if isinstance(rule, ThresholdRule):
        return rule
    if isinstance(rule, (int, float, np.integer, np.floating)) and not isinstance(rule, bool):
        v = float(rule)
        if not math.isfinite(v):
            raise error(f"{who}: threshold {rule!r} is not finite")
        return v
    if isinstance(rule, str):
        m = _RULE_RE.match(rule)
        if m is None:
            try:
                return parse_threshold_rule(float(rule), marker, error=error, where=where)
            except ValueError:
                pass
            raise error(f"{who}: threshold rule {rule!r} not understood; expected a number, {RULE_FORMS}")
        if m.group("pct"):
            spec = {"rule": "percentile", "q": m.group("q"), "control": m.group("control")}
        elif m.group("nsd") is not None:
            spec = {"rule": "mean_sd", "n_sd": m.group("nsd"), "control": m.group("control")}
        else:
            spec = {"rule": "median_mad", "n_mad": m.group("nmad"), "control": m.group("control")}
        out = parse_threshold_rule(spec, marker, error=error, where=where)
        out.text = rule.strip()
        return out
    if isinstance(rule, Mapping):
        kind = str(rule.get("rule", "")).lower().replace("-", "_")
        control = rule.get("control")
        if not isinstance(control, str) or not control:
            raise error(f"{who}: threshold rule {dict(rule)!r} needs a 'control' sample name")
        try:
            if kind == "percentile":
                q = float(rule["q"])
                if not 0 <= q <= 100:
                    raise error(f"{who}: threshold rule {dict(rule)!r}: q={q:g} is not in 0..100")
                return ThresholdRule("percentile", control, q=q)
            if kind in ("mean_sd", "mean+sd", "meansd", "median_mad", "median+mad", "medianmad"):
                key = "n_sd" if kind.startswith("mean") or "n_mad" not in rule else "n_mad"
                k = float(rule[key])
                if not math.isfinite(k):
                    raise ValueError
                return ThresholdRule("mean_sd" if kind.startswith("mean") else "median_mad", control, n_sd=k)
        except (KeyError, TypeError, ValueError):
            raise error(f"{who}: threshold rule {dict(rule)!r} lacks a numeric q / n_sd / n_mad") from None
        raise error(
            f"{who}: threshold rule kind {rule.get('rule')!r} unknown; expected 'percentile', 'mean_sd' or 'median_mad'"
        )
    raise error(f"{who}: threshold {rule!r} is neither a number nor a rule; expected a number, {RULE_FORMS}")


def finite_values(values) -> np.ndarray:
    """The finite values of a control as a flat float64 NumPy array (NumPy, CuPy, dask or pandas input)."""
    from ..backend import to_numpy

    v = to_numpy(values).astype(np.float64).ravel()
    return v[np.isfinite(v)]


def compute_threshold(values, rule, *, error=ConfigError, what: str = "the control") -> float:
    """The threshold a rule gives for a control's values.

    Parameters
    ----------
    values : array
        The control's values (channel units or photons); non-finite ones are dropped.
    rule : ThresholdRule, str or dict
        See :func:`parse_threshold_rule`.
    error : type
        The error raised for a bad rule or an empty control.
    what : str
        Names the control in the error message.

    Returns
    -------
    float
        In the units of ``values``.
    """
    r = parse_threshold_rule(rule, error=error, where=f"threshold rule for {what}")
    if not isinstance(r, ThresholdRule):
        raise error(f"threshold rule for {what}: {rule!r} is a number, not a rule; expected {RULE_FORMS}")
    v = finite_values(values)
    if v.size == 0:
        raise error(f"{what} has no (finite) values; threshold rule {r.text!r} needs some")
    return r.statistic(v)


def experiment_rule(table: Mapping, key: str, *, default: str | None, keywords=("fixed",)):
    """The rule of an experiment file's thresholds table (``[thresholds]``, ``[imaging.thresholds]``).

    Parameters
    ----------
    table : mapping
        The table: ``rule`` and, for the alias ``rule = "control_quantile"``,
        ``control`` (a role, default :data:`DEFAULT_CONTROL`) and ``quantile``
        (0..1, default :data:`DEFAULT_QUANTILE`).
    key : str
        The table's key, named in error messages (``"thresholds"``).
    default : str or None
        The rule when the table has none.
    keywords : sequence of str
        Rules that are not control rules (``"fixed"``, ``"detected"``); returned as given.

    Returns
    -------
    str, ThresholdRule or None
        A keyword, a rule whose ``control`` is a sample role, or None (no rule, no default).

    Raises
    ------
    ConfigError
        A rule that is neither a keyword nor a control rule, a quantile
        outside (0, 1), or ``quantile`` / a different ``control`` given
        beside a rule string; the message names the key.
    """
    rule = table.get("rule", default)
    if rule is None or rule in keywords:
        return rule
    expected = (", ".join(keywords) + f" or a control rule: {RULE_FORMS}, "
                "or the alias control_quantile (with 'quantile' and 'control')")
    if not isinstance(rule, str):
        raise ConfigError(f"'{key}.rule' is {rule!r}, expected {expected}")
    if rule == "control_quantile":
        control = table.get("control", DEFAULT_CONTROL)
        q = table.get("quantile", DEFAULT_QUANTILE)
        if not isinstance(q, (int, float)) or isinstance(q, bool) or not 0 < q < 1:
            raise ConfigError(f"'{key}.quantile' is {q}, expected a number in (0, 1)")
        return ThresholdRule.from_quantile(q, str(control))
    try:
        r = parse_threshold_rule(rule, error=ConfigError, where=f"'{key}.rule'")
    except ConfigError:
        raise ConfigError(f"'{key}.rule' is {rule!r}, expected {expected}") from None
    if not isinstance(r, ThresholdRule):
        raise ConfigError(f"'{key}.rule' is {rule!r}, expected {expected} (fixed thresholds go in '{key}.values')")
    if "quantile" in table:
        raise ConfigError(f"'{key}.quantile' is given with the rule {rule!r}; the rule alone sets the threshold "
                          "(use rule = \"control_quantile\" for a quantile)")
    if "control" in table and table["control"] != r.control:
        raise ConfigError(f"'{key}.control' is {table['control']!r} but '{key}.rule' {rule!r} names control "
                          f"{r.control!r}")
    return r
