"""Calibrated events out: an FCS file with the sample's events plus MESF, diameter, gate and phenotype channels.

:func:`export_fcs` (and :meth:`GatingResults.to_fcs <evflow.flow.gates.GatingResults.to_fcs>`) writes

- every channel of the sample on its scale policy (``FCSSample.scale``: as
  evflow gates and calibrates it, ``$PnE`` log decoding and, for
  ``"linear-gain"``, the ``$PnG`` gain applied; the file says so in
  ``$PnE = 0,0``, ``EVFLOW_SCALE`` and ``EVFLOW_PnSCALE``),
- one ``<channel>_<units>`` channel per fluorescence calibration (``FL1_MEFL``),
- ``diameter_nm`` from a scatter (size) calibration (NaN outside the range
  where scatter determines the diameter uniquely),
- one 0/1 channel ``GATE<k>`` per gate (membership with parents; ``$PnS`` is
  the gate id),
- ``phenotype``: the marker bitmask (bit ``k`` set when marker ``k``'s
  channel value is above its threshold, as :func:`evflow.count_phenotypes`
  counts it), with ``EVFLOW_PHENOTYPE_BITS`` naming the bits,

and keeps the original TEXT keywords (``$CYT``, ``$DATE``, ``$SPILLOVER``,
``$PnV``, custom keywords, ...) except those the writer computes.  Every added
channel has ``EVFLOW_PnSOURCE`` (what it was made from) and
``EVFLOW_PnMETHOD`` (how) keywords.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import FCSError

__all__ = ["export_fcs"]

_PN = re.compile(r"^\$P(\d+)([A-Z]+)$")
_WRITER_KEYS = re.compile(r"^\$P\d+[NSBERG]$")


def _as_list(x):
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _cal_text(d: dict) -> str:
    return json.dumps(d, separators=(",", ":"), default=str)


def export_fcs(sample, path, *, gating=None, mesf=None, size=None, markers=None, version: str = "3.1",
               meta: Mapping | None = None) -> Path:
    """Write a sample's events with calibrated, gate and phenotype channels as an FCS file.

    Parameters
    ----------
    sample : FCSSample or str or Path
        The sample (a path is read with :func:`evflow.read_fcs`).
    path : str or Path
        Output ``.fcs`` file (written atomically).
    gating : GatingResults, optional
        Gate memberships of this sample (:meth:`GatingStrategy.apply`); one 0/1
        channel per gate.
    mesf : MESFCalibration or list of them, optional
        Fluorescence calibrations; one ``<channel>_<units>`` channel each.
    size : ScatterCalibration, optional
        Adds ``diameter_nm`` from its scatter channel.
    markers : mapping marker -> (channel, threshold), optional
        Thresholds on the channel's linear scale; adds the ``phenotype`` bitmask
        channel (bit ``k`` for the ``k``-th marker, ``value > threshold``).
    version : {"3.1", "3.2"}
        FCS version to write ("3.2" where :func:`evflow.write_fcs` supports it).
    meta : mapping, optional
        More TEXT keywords (override the original ones).

    Returns
    -------
    Path

    Raises
    ------
    FCSError
        A calibration or marker names a channel the sample does not have, the
        gating results belong to another number of events, or the version is
        not one the writer writes.
    """
    from ..io.fcs import as_sample, write_fcs

    sample = as_sample(sample, what="export_fcs()")
    src = getattr(sample, "path", None) or getattr(sample, "name", "<sample>")
    out = Path(os.fspath(path))
    version = str(version)
    wparams = inspect.signature(write_fcs).parameters
    if version != "3.1" and "version" not in wparams:
        raise FCSError(f"version {version!r}: this evflow writes FCS 3.1 only", out)
    channels = list(sample.channels)
    n_orig = len(channels)
    index = {c: i for i, c in enumerate(channels)}

    def need(ch, what):
        if ch not in index:
            raise FCSError(f"{what} uses channel {ch!r}, which {src} does not have; channels are {channels}", out)
        return index[ch]

    import dask.array as da

    lin = sample.linear_events()
    if not isinstance(lin, da.Array):
        lin = da.from_array(np.asarray(lin), chunks=(1 << 20, -1))
    lin = lin.astype(np.float64)
    cols = [lin]
    names, labels = list(channels), list(getattr(sample, "markers", None) or [None] * n_orig)
    kw: dict[str, str] = {}
    meta0 = dict(getattr(sample, "meta", {}) or {})
    for k, v in meta0.items():
        key = str(k).strip().upper()
        m = _PN.match(key)
        if m and (int(m.group(1)) > n_orig or _WRITER_KEYS.match(key)):
            continue  # keywords of channels beyond $PAR, or those the writer sets
        kw[key] = str(v)
    policy = str(getattr(sample, "scale", "linear-gain"))
    kw["EVFLOW_SCALE"] = policy
    for i in range(1, n_orig + 1):
        e = str(meta0.get(f"$P{i}E", "0,0")).strip()
        g = str(meta0.get(f"$P{i}G", "")).strip()
        # (no '$' in values: some readers drop it)
        how = "stored values" if policy == "raw" else f"decoded with P{i}E {e}" + (
            f", divided by P{i}G {g}" if g and policy == "linear-gain" else "")
        kw[f"EVFLOW_P{i}SCALE"] = f"{policy}: {how} of {os.path.basename(str(src))}"

    added = []  # (name, label, source, method, column)

    for cal in _as_list(mesf):
        j = need(cal.channel, f"the {cal.units} calibration")
        name = f"{cal.channel}_{cal.units}"
        p = cal.params
        added.append((name, f"{cal.channel} in {cal.units}", cal.channel,
                      f"{cal.units} = sign(x) exp(b) |x|^m, m={p['m']:.6g}, b={p['b']:.6g}, r2={cal.r2:.6g}, "
                      f"beads {os.path.basename(str(cal.source or '?'))}", cal.to_mesf(lin[:, j])))
    if size is not None:
        j = need(size.channel, "the size calibration")
        lo, hi = size.unique_range_nm
        added.append(("diameter_nm", f"diameter (nm) from {size.channel}", size.channel,
                      f"Mie scatter model, gain {size.gain:.6g} per nm2, r2={size.r2:.6g}, unique for "
                      f"{lo:.4g}-{hi:.4g} nm (NaN outside), beads {os.path.basename(str(size.source or '?'))}", size.to_diameter(lin[:, j])))
    if gating is not None:
        if int(gating.n_events) != int(sample.n_events):
            raise FCSError(f"the gating results hold {gating.n_events} events, {src} has {sample.n_events}", out)
        strategy = gating.strategy
        for k, gid in enumerate(gating.gate_ids, start=1):
            chain = " > ".join(strategy.parent_chain(gid)) if gid in strategy.gates else gid
            added.append((f"GATE{k}", gid, gid, f"gate membership 0/1, parents included ({chain})",
                          gating.membership(gid).astype(np.float64)))
    if markers:
        bits, mask = [], None
        for b, (marker, spec) in enumerate(dict(markers).items()):
            if b >= 24:
                raise FCSError("at most 24 markers fit a float32 phenotype bitmask exactly", out)
            try:
                ch, thr = spec
                thr = float(thr)
            except (TypeError, ValueError):
                raise FCSError(f"marker {marker!r}: expected (channel, threshold), got {spec!r}", out) from None
            j = need(ch, f"marker {marker!r}")
            bit = (lin[:, j] > thr).astype(np.int64) << b
            mask = bit if mask is None else mask | bit
            bits.append(f"bit{b}={marker}:{ch}>{thr:.6g}")
        added.append(("phenotype", "phenotype bitmask", ", ".join(str(m) for m in markers),
                      "bitmask of markers above threshold (linear channel units): " + "; ".join(bits),
                      mask.astype(np.float64)))
        kw["EVFLOW_PHENOTYPE_BITS"] = "; ".join(bits)

    for name, label, source, method, col in added:
        if name in names:
            raise FCSError(f"added channel {name!r} clashes with a channel of {src}", out)
        names.append(name)
        labels.append(label)
        i = len(names)
        kw[f"EVFLOW_P{i}SOURCE"] = str(source)
        kw[f"EVFLOW_P{i}METHOD"] = method
        cols.append(col.reshape(-1, 1))
    kw["EVFLOW_ORIGINAL_PAR"] = str(n_orig)
    kw["EVFLOW_SOURCE"] = os.path.basename(str(src))  # a value starting with the delimiter trips some readers
    kw.update({str(k).upper(): str(v) for k, v in (meta or {}).items()})
    data = da.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]
    data = data.rechunk({1: -1})
    kwargs = {"version": version} if "version" in wparams else {}
    return write_fcs(out, data, names, markers=labels, meta=kw, **kwargs)
