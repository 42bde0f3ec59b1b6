"""EV assay controls (MIFlowCyt-EV) and the report items evflow can fill from data.

Controls are described by their role (:data:`ROLES`): buffer only, buffer
with reagents, unstained, isotype and single stains, detergent (lysis)
treated, and a serial dilution.  Every check returns a :class:`ControlCheck`
with ``status`` ``"pass"``, ``"flag"`` or ``"missing"`` and the numbers behind
it, so nothing is silently assumed:

* :func:`threshold_from_control` - positivity threshold from a negative
  control (isotype, unstained, buffer + reagents), in channel and calibrated units;
* :func:`subtract_buffer_counts` - buffer(-with-reagents) counts subtracted from a
  sample, per volume (``subtract_background`` is its deprecated name);
* :func:`detergent_check` - fraction of events that disappear after lysis;
* :func:`dilution_series_check` - counts scale with dilution while per-event
  fluorescence and scatter stay flat (otherwise: swarm / coincidence);
* :func:`evaluate_controls` - runs the checks a set of controls allows and
  flags (or raises for) the ones whose controls are missing;
* :func:`miflowcyt_ev_items`, :func:`miflowcyt_ev_markdown`,
  :func:`miflowcyt_ev_html` - the MIFlowCyt-EV report section.

A "control" in these functions is a mapping with any of ``count`` (events in
the analysed gate), ``volume_ul`` (analysed volume), ``dilution`` (factor),
``fluorescence`` and ``scatter`` (per-event arrays, or their medians as
``median_fluorescence`` / ``median_scatter``).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .thresholds import (
    DEFAULT_QUANTILE,
    RULE_FORMS,
    ThresholdRule,
    finite_values,
    parse_threshold_rule,
)

__all__ = [
    "ROLES",
    "ControlCheck",
    "Threshold",
    "threshold_from_control",
    "subtract_buffer_counts",
    "subtract_background",
    "detergent_check",
    "dilution_series_check",
    "evaluate_controls",
    "miflowcyt_ev_items",
    "miflowcyt_ev_markdown",
    "miflowcyt_ev_html",
]

#: control roles, as the MIFlowCyt-EV framework names them
ROLES = {
    "buffer": "buffer only",
    "buffer_reagents": "buffer with reagents (labels, no EVs)",
    "unstained": "unstained sample",
    "isotype": "isotype control",
    "single_stain": "single-stained sample",
    "detergent": "detergent-treated (lysed) sample",
    "dilution": "serial dilution",
}


@dataclass
class ControlCheck:
    """Outcome of one control rule.

    Attributes
    ----------
    name : str
        The rule (``"buffer background"``, ``"detergent lysis"``, ...).
    status : str
        ``"pass"``, ``"flag"`` (the data break the rule) or ``"missing"``
        (the controls the rule needs were not given).
    values : dict
        The numbers behind the outcome.
    message : str
        One sentence saying what was found against what was expected.
    """

    name: str
    status: str
    values: dict = field(default_factory=dict)
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "values": _plain(self.values), "message": self.message}


def _plain(v):
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in np.asarray(v, dtype=object).tolist()] if not isinstance(v, (list, tuple)) else [_plain(x) for x in v]
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    return v


def _get(control: Mapping, key: str, role: str, rule: str):
    if key not in control or control[key] is None:
        raise ConfigError(f"{rule}: the {role!r} control has no {key!r} (keys given: {sorted(control)})")
    return control[key]


def _per_ul(control: Mapping, role: str, rule: str) -> tuple[float, float | None]:
    """Counts per microlitre (or raw counts when no volume is given)."""
    n = float(_get(control, "count", role, rule))
    if n < 0:
        raise ConfigError(f"{rule}: the {role!r} control has count {n}, expected >= 0")
    v = control.get("volume_ul")
    if v is None:
        return n, None
    v = float(v)
    if not v > 0:
        raise ConfigError(f"{rule}: the {role!r} control has volume_ul {v}, expected > 0")
    return n / v, v


# --------------------------------------------------------------------------- thresholds


@dataclass
class Threshold:
    """A positivity threshold derived from a negative control.

    Attributes
    ----------
    channel_value : float
        Threshold on the channel's linear scale.
    calibrated_value : float or None
        The same threshold in calibrated units (``units``), when a calibration was given.
    units : str
    method : str
        E.g. ``"99.5th percentile of isotype"``.
    control_role : str
    n_events : int
        Events in the control.
    fraction_above : float
        Fraction of control events above the threshold (the false-positive rate it implies).
    """

    channel_value: float
    calibrated_value: float | None
    units: str
    method: str
    control_role: str
    n_events: int
    fraction_above: float

    def to_dict(self) -> dict:
        return _plain(self.__dict__)


def threshold_from_control(values, *, role: str = "isotype", quantile: float = DEFAULT_QUANTILE,
                           n_sd: float | None = None, rule=None, calibration=None) -> Threshold:
    """Positivity threshold from a negative control's per-event values.

    The statistic is one of :mod:`evflow.flow.thresholds` (the rule grammar shared with
    :func:`evflow.count_phenotypes` and the experiment file).

    Parameters
    ----------
    values : array (n_events,)
        The marker channel in the control (linear scale; NumPy, CuPy or dask).
    role : str
        The control's role (``"isotype"``, ``"unstained"``, ``"buffer_reagents"``...).
    quantile : float
        Threshold = this quantile (0..1) of the control (default 0.995: the
        99.5th percentile); the alias of the rule ``"percentile 99.5 of <role>"``.
    n_sd : float, optional
        Instead: median + ``n_sd`` robust SDs (1.4826 x MAD): the rule ``"median+<n_sd>mad of <role>"``.
    rule : str, dict or ThresholdRule, optional
        Instead of ``quantile`` / ``n_sd``: any rule of :func:`evflow.flow.thresholds.parse_threshold_rule`
        (its control name is ignored: the values are the control).
    calibration : MESFCalibration, optional
        Also express the threshold in its units.

    Raises
    ------
    ConfigError
        For an unknown role, an empty control, a bad rule, or a quantile outside (0, 1).
    """
    if role not in ROLES:
        raise ConfigError(f"unknown control role {role!r}; expected one of {sorted(ROLES)}")
    v = finite_values(values)
    if v.size == 0:
        raise ConfigError(f"the {role!r} control has no (finite) events; a threshold needs events")
    if rule is not None:
        r = parse_threshold_rule(rule, error=ConfigError, where=f"the {role!r} control")
        if not isinstance(r, ThresholdRule):
            raise ConfigError(f"the {role!r} control: rule {rule!r} is a number, not a rule; expected {RULE_FORMS}")
        r = r.for_control(role)
    elif n_sd is None:
        if not 0 < quantile < 1:
            raise ConfigError(f"quantile must be in (0, 1), got {quantile}")
        r = ThresholdRule.from_quantile(quantile, role)
    else:
        r = ThresholdRule("median_mad", role, n_sd=float(n_sd))
    t = r.statistic(v)
    cal_t = None
    units = "channel units"
    if calibration is not None:
        cal_t = float(calibration.to_mesf(np.array([t]))[0])
        units = calibration.units
    return Threshold(t, cal_t, units, r.method, role, int(v.size), float(np.mean(v > t)))


# --------------------------------------------------------------------------- background, detergent, dilution


def subtract_buffer_counts(sample: Mapping, buffer: Mapping, *, role: str = "buffer", max_background_fraction: float = 0.1):
    """Subtract buffer(-with-reagents) counts from a sample, per volume.

    Returns
    -------
    ControlCheck
        ``values``: ``net_count`` (in the sample's volume), ``background_count``
        (scaled to it), ``background_fraction``.  Flags when the background
        exceeds ``max_background_fraction`` of the sample or the net count is
        not positive.
    """
    rule = "buffer background"
    s_rate, s_vol = _per_ul(sample, "sample", rule)
    b_rate, b_vol = _per_ul(buffer, role, rule)
    if (s_vol is None) != (b_vol is None):
        raise ConfigError(f"{rule}: give volume_ul for both the sample and the {role!r} control, or for neither")
    scale = s_vol if s_vol is not None else 1.0
    n_sample = s_rate * scale
    n_bg = b_rate * scale
    net = n_sample - n_bg
    frac = n_bg / n_sample if n_sample > 0 else math.inf
    values = {"sample_count": n_sample, "background_count": n_bg, "net_count": net, "background_fraction": frac,
              "control_role": role, "max_background_fraction": max_background_fraction}
    if net <= 0:
        return ControlCheck(rule, "flag", values, f"{role} control counts ({n_bg:.0f}) reach the sample's ({n_sample:.0f}): no EV signal above background")
    if frac > max_background_fraction:
        return ControlCheck(rule, "flag", values, f"background is {100 * frac:.1f} % of the sample counts, above the {100 * max_background_fraction:g} % allowed")
    return ControlCheck(rule, "pass", values, f"background is {100 * frac:.1f} % of the sample counts (at most {100 * max_background_fraction:g} %)")


def subtract_background(sample: Mapping, buffer: Mapping, *, role: str = "buffer", max_background_fraction: float = 0.1):
    """Deprecated name of :func:`subtract_buffer_counts` (same arguments and result)."""
    import warnings

    warnings.warn("evflow.flow.controls.subtract_background is deprecated; use subtract_buffer_counts",
                  DeprecationWarning, stacklevel=2)
    return subtract_buffer_counts(sample, buffer, role=role, max_background_fraction=max_background_fraction)


def detergent_check(sample: Mapping, lysed: Mapping, *, background: Mapping | None = None, min_lysed_fraction: float = 0.5):
    """Fraction of events that disappear after detergent treatment (EVs are lysed, aggregates and beads are not).

    Counts are compared per microlitre when volumes are given, after
    subtracting ``background`` (buffer + detergent) when given.  Flags when
    less than ``min_lysed_fraction`` disappears.
    """
    rule = "detergent lysis"
    s_rate, _ = _per_ul(sample, "sample", rule)
    l_rate, _ = _per_ul(lysed, "detergent", rule)
    bg = 0.0
    if background is not None:
        bg, _ = _per_ul(background, "buffer", rule)
    s_net, l_net = s_rate - bg, max(l_rate - bg, 0.0)
    if s_net <= 0:
        return ControlCheck(rule, "flag", {"sample_rate": s_rate, "background_rate": bg},
                            "the sample has no counts above background; the lysis fraction is undefined")
    lysed_fraction = 1.0 - l_net / s_net
    values = {"sample_rate": s_rate, "lysed_rate": l_rate, "background_rate": bg,
              "lysed_fraction": lysed_fraction, "remaining_fraction": 1.0 - lysed_fraction,
              "min_lysed_fraction": min_lysed_fraction}
    status = "pass" if lysed_fraction >= min_lysed_fraction else "flag"
    word = "at least" if status == "pass" else "below the"
    return ControlCheck(rule, status, values,
                        f"{100 * lysed_fraction:.1f} % of events disappear after detergent ({word} {100 * min_lysed_fraction:g} % expected of membrane vesicles)")


def _median(c: Mapping, key: str):
    from ..backend import to_numpy

    if f"median_{key}" in c and c[f"median_{key}"] is not None:
        return float(c[f"median_{key}"])
    if key in c and c[key] is not None:
        v = to_numpy(c[key]).astype(float).ravel()
        v = v[np.isfinite(v)]
        return float(np.median(v)) if v.size else math.nan
    return None


def dilution_series_check(series: Sequence[Mapping], *, count_tolerance: float = 0.2, flat_tolerance: float = 0.2):
    """Check a serial dilution for swarm / coincidence detection.

    Single-particle detection needs counts proportional to concentration
    (``count * dilution`` constant, per volume when volumes are given) while
    per-event fluorescence and scatter stay flat.  Each dilution is compared
    with the most diluted one that has counts (the least affected by swarm).

    Parameters
    ----------
    series : sequence of mappings
        One per dilution: ``dilution`` and ``count`` (and ``volume_ul``,
        ``fluorescence``/``median_fluorescence``, ``scatter``/``median_scatter``).
    count_tolerance : float
        Largest relative deviation of the back-calculated concentration.
    flat_tolerance : float
        Largest relative change of median fluorescence / scatter.

    Returns
    -------
    ControlCheck
        ``values``: per dilution the back-calculated concentration and its
        deviation, median fluorescence/scatter and their deviations, the
        log-log slope of counts vs concentration (1 expected), and
        ``swarm_suspected`` (dilutions that break the rule).
    """
    rule = "dilution series"
    if len(series) < 3:
        return ControlCheck(rule, "missing", {"n_dilutions": len(series)},
                            f"a dilution series needs at least 3 dilutions, got {len(series)}")
    dil = np.array([float(_get(c, "dilution", "dilution", rule)) for c in series])
    if np.any(dil <= 0):
        raise ConfigError(f"{rule}: dilution factors must be > 0, got {dil.tolist()}")
    rates = np.array([_per_ul(c, "dilution", rule)[0] for c in series])
    conc = rates * dil
    order = np.argsort(dil)
    ref_i = next((i for i in order[::-1] if rates[i] > 0), None)
    if ref_i is None:
        return ControlCheck(rule, "flag", {"dilution": dil.tolist(), "rate": rates.tolist()}, "no counts in any dilution")
    conc_dev = conc / conc[ref_i] - 1.0
    pos = rates > 0
    slope = float(np.polyfit(np.log(1.0 / dil[pos]), np.log(rates[pos]), 1)[0]) if pos.sum() >= 2 else math.nan
    bad = set(np.nonzero(np.abs(conc_dev) > count_tolerance)[0].tolist())
    values = {"dilution": dil.tolist(), "rate": rates.tolist(), "concentration_undiluted": conc.tolist(),
              "concentration_deviation": conc_dev.tolist(), "loglog_slope": slope,
              "reference_dilution": float(dil[ref_i]), "count_tolerance": count_tolerance,
              "flat_tolerance": flat_tolerance}
    for key in ("fluorescence", "scatter"):
        med = [_median(c, key) for c in series]
        if all(m is None for m in med):
            continue
        med = np.array([np.nan if m is None else m for m in med])
        dev = med / med[ref_i] - 1.0
        values[f"median_{key}"] = med.tolist()
        values[f"{key}_deviation"] = dev.tolist()
        bad |= set(np.nonzero(np.abs(dev) > flat_tolerance)[0].tolist())
    swarm = sorted(float(dil[i]) for i in bad)
    values["swarm_suspected"] = swarm
    if swarm:
        return ControlCheck(rule, "flag", values,
                            f"dilution(s) {swarm} break linearity (counts x dilution off by > {100 * count_tolerance:g} % "
                            f"or per-event signal off by > {100 * flat_tolerance:g} %): swarm / coincidence detection; "
                            f"analyse at a dilution of at least {max(dil[[i for i in range(dil.size) if i not in bad]], default=float('nan')):g}")
    return ControlCheck(rule, "pass", values,
                        f"counts scale with dilution (log-log slope {slope:.2f}) and per-event signals stay within "
                        f"{100 * flat_tolerance:g} %")


# --------------------------------------------------------------------------- all rules


def evaluate_controls(sample: Mapping, controls: Mapping[str, object], *, rules: Sequence[str] | None = None,
                      on_missing: str = "flag", max_background_fraction: float = 0.1,
                      min_lysed_fraction: float = 0.5, count_tolerance: float = 0.2, flat_tolerance: float = 0.2):
    """Run the control rules on a sample and its controls.

    Parameters
    ----------
    sample : mapping
        The stained sample (``count``, ``volume_ul``...).
    controls : mapping role -> control (or list of controls for ``"dilution"``)
        Roles from :data:`ROLES`.
    rules : sequence of str, optional
        Among ``"buffer"``, ``"buffer_reagents"``, ``"detergent"``,
        ``"dilution"`` (default: all four).
    on_missing : {"flag", "raise"}
        A rule whose control is absent gives a ``"missing"`` check, or raises
        :class:`ConfigError`.

    Returns
    -------
    list of ControlCheck
    """
    unknown = sorted(set(controls) - set(ROLES))
    if unknown:
        raise ConfigError(f"unknown control role(s) {unknown}; expected among {sorted(ROLES)}")
    if on_missing not in ("flag", "raise"):
        raise ConfigError(f"on_missing={on_missing!r}, expected 'flag' or 'raise'")
    rules = ["buffer", "buffer_reagents", "detergent", "dilution"] if rules is None else list(rules)
    needs = {"buffer": "buffer", "buffer_reagents": "buffer_reagents", "detergent": "detergent", "dilution": "dilution"}
    out = []
    for rule in rules:
        if rule not in needs:
            raise ConfigError(f"unknown control rule {rule!r}; expected among {sorted(needs)}")
        role = needs[rule]
        if controls.get(role) is None:
            msg = f"no {ROLES[role]!r} control was given (role {role!r}), so the {rule!r} rule cannot be checked"
            if on_missing == "raise":
                raise ConfigError(msg)
            out.append(ControlCheck(f"{rule} control", "missing", {"role": role}, msg))
            continue
        if rule in ("buffer", "buffer_reagents"):
            chk = subtract_buffer_counts(sample, controls[role], role=role, max_background_fraction=max_background_fraction)
            chk.name = f"{ROLES[role]} background"
            out.append(chk)
        elif rule == "detergent":
            out.append(detergent_check(sample, controls[role], background=controls.get("buffer"),
                                       min_lysed_fraction=min_lysed_fraction))
        else:
            series = controls[role]
            if isinstance(series, Mapping):
                series = [series]
            out.append(dilution_series_check(series, count_tolerance=count_tolerance, flat_tolerance=flat_tolerance))
    return out


# --------------------------------------------------------------------------- MIFlowCyt-EV report


_NOT_FROM_DATA = "not available from the data; report manually"


def miflowcyt_ev_items(*, sample=None, mesf_calibration=None, scatter_calibration=None, thresholds=None,
                       checks=None, concentration=None, size_gate_nm=None, trigger=None, extra=None) -> dict:
    """The MIFlowCyt-EV items evflow can fill from the data and configuration.

    Parameters
    ----------
    sample : FCSSample, optional
        Instrument and acquisition keywords ($CYT, $CYTSN, $DATE, $VOL...).
    mesf_calibration : MESFCalibration or sequence of them, optional
    scatter_calibration : ScatterCalibration, optional
    thresholds : mapping marker -> Threshold, optional
    checks : sequence of ControlCheck, optional
    concentration : mapping, optional
        ``{"particles_per_ml": ..., "volume_ul": ..., "method": ..., "dilution_factor": ...}``.
    size_gate_nm : (float, float), optional
    trigger : str, optional
        Trigger channel and threshold, as the user set it.
    extra : mapping, optional
        Further items (e.g. pre-analytical variables) to include verbatim.

    Returns
    -------
    dict section -> {item: value}; items evflow cannot fill say so.
    """
    meta = getattr(sample, "meta", {}) or {}
    inst = {
        "Instrument": meta.get("$CYT") or _NOT_FROM_DATA,
        "Instrument serial number": meta.get("$CYTSN") or _NOT_FROM_DATA,
        "Acquisition software": meta.get("CREATOR") or meta.get("$CREATOR") or _NOT_FROM_DATA,
        "Acquisition date": meta.get("$DATE") or _NOT_FROM_DATA,
        "Trigger channel and threshold": trigger or _NOT_FROM_DATA,
        "Channels": ", ".join(getattr(sample, "channels", []) or []) or _NOT_FROM_DATA,
    }
    fl = {}
    cals = mesf_calibration if isinstance(mesf_calibration, (list, tuple)) else ([mesf_calibration] if mesf_calibration else [])
    if not cals:
        fl["Fluorescence calibration"] = "none: fluorescence is reported in arbitrary units"
    for c in cals:
        p = c.params
        used = int(np.isfinite(c.peaks).sum())
        fl[f"{c.channel} calibration"] = (
            f"{c.units} from {used} of {len(c.peaks)} bead peaks ({c.source}); model {c.model}; "
            f"m = {p['m']:.4g}, b = {p['b']:.4g}, bead autofluorescence = {p['mesf_auto']:.4g} {c.units}; "
            f"R^2 = {c.r2:.5f}; peaks not used: "
            + (", ".join(f"{i} ({s})" for i, s in enumerate(c.peak_status) if s != "used") or "none")
        )
    sc = {}
    if scatter_calibration is None:
        sc["Scatter calibration"] = "none: scatter is reported in arbitrary units"
    else:
        s = scatter_calibration
        sc["Scatter calibration"] = (
            f"{s.channel}: Mie theory, wavelength {s.wavelength_nm:g} nm, medium index {s.medium_index:g}, "
            f"detector {s.detector!r}; gain {s.gain:.4g} units/nm^2 fitted on {s.bead_model!r} beads of "
            f"{', '.join(f'{d:g}' for d in s.bead_diameters_nm)} nm (log residuals "
            f"{', '.join(f'{r:+.3f}' for r in s.residuals)})"
        )
        sc["EV model"] = repr(s.particle)
        sc["Diameter range with a unique scatter-diameter relation"] = (
            f"{s.unique_range_nm[0]:.0f}-{s.unique_range_nm[1]:.0f} nm"
        )
    if size_gate_nm is not None:
        sc["Size gate"] = f"{size_gate_nm[0]:g}-{size_gate_nm[1]:g} nm (diameter from calibrated scatter)"
    th = {}
    for marker, t in (thresholds or {}).items():
        cal = f" = {t.calibrated_value:.4g} {t.units}" if t.calibrated_value is not None else ""
        th[f"{marker} positivity threshold"] = (
            f"{t.channel_value:.4g} channel units{cal} ({t.method}; {100 * t.fraction_above:.2f} % of "
            f"{t.n_events} control events above)"
        )
    if not th:
        th["Positivity thresholds"] = _NOT_FROM_DATA
    ctl = {}
    for chk in checks or []:
        ctl[chk.name] = f"{chk.status.upper()}: {chk.message}"
    if not ctl:
        ctl["Assay controls"] = "no controls were analysed"
    conc = {}
    if concentration:
        c = concentration
        conc["EV concentration"] = f"{c['particles_per_ml']:.4g} particles/mL"
        if "volume_ul" in c:
            conc["Analysed volume"] = f"{c['volume_ul']:.4g} uL ({c.get('method', 'given')})"
        if "dilution_factor" in c:
            conc["Dilution factor"] = f"{c['dilution_factor']:g}"
    else:
        conc["EV concentration"] = _NOT_FROM_DATA
    items = {
        "Instrument and acquisition": inst,
        "Fluorescence calibration": fl,
        "Scatter calibration": sc,
        "Thresholds": th,
        "Assay controls": ctl,
        "Concentration": conc,
    }
    if extra:
        items["Other"] = {str(k): str(v) for k, v in extra.items()}
    return items


def miflowcyt_ev_markdown(items: Mapping) -> str:
    """The MIFlowCyt-EV items as a Markdown section (to paste into a methods section)."""
    lines = ["## MIFlowCyt-EV", ""]
    for section, entries in items.items():
        lines += [f"### {section}", "", "| Item | Value |", "|---|---|"]
        for k, v in entries.items():
            lines.append(f"| {str(k).replace('|', '/')} | {str(v).replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def miflowcyt_ev_html(items: Mapping) -> str:
    """The MIFlowCyt-EV items as an HTML fragment (a ``<section>``)."""
    out = ['<section class="miflowcyt-ev"><h2>MIFlowCyt-EV</h2>']
    for section, entries in items.items():
        out.append(f"<h3>{html.escape(str(section))}</h3><table><tr><th>Item</th><th>Value</th></tr>")
        for k, v in entries.items():
            out.append(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>")
        out.append("</table>")
    out.append("</section>")
    return "".join(out)
