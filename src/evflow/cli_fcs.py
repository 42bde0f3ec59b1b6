"""``evflow info`` for FCS files: what each data set holds, as people look for it."""

from __future__ import annotations

from .errors import EvflowError

#: the per-channel keywords ``evflow info`` shows: (column title, $Pn letter)
_COLUMNS = (("$PnB", "B"), ("$PnR", "R"), ("$PnE", "E"), ("$PnG", "G"), ("$PnV", "V"), ("$PnL", "L"),
            ("$PnF", "F"))


def _table(rows, titles) -> list[str]:
    """Left-aligned columns as wide as their longest entry (long marker names included)."""
    widths = [max([len(t)] + [len(r[j]) for r in rows]) for j, t in enumerate(titles)]
    fmt = lambda cells: "    " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(titles)] + [fmt(r) for r in rows]


def _number(raw):
    try:
        return float(str(raw).strip())
    except (TypeError, ValueError):
        return None


def _keyword_lines(meta, sample=None) -> list[str]:
    """$VOL, $TIMESTEP, $FLOWRATE, acquisition time, triggers and the scale policy."""
    from .io.fcs.acquisition import flow_rate_problem, implied_flow_ul_per_min, triggers
    from .io.fcs.scale import default_scale
    from .io.fcs.text import clock_seconds

    out = []
    secs = None
    if sample is not None:
        try:
            got = sample.acquisition_seconds()
        except EvflowError:
            got = None
    else:
        dt = clock_seconds(meta)
        got = None if dt is None else (dt, "$BTIM/$ETIM")
    clock = clock_seconds(meta)
    if got is not None and got[1] != "$BTIM/$ETIM" and not str(meta.get("$TIMESTEP", "") or "").strip():
        # a time channel without $TIMESTEP counts ticks, not seconds
        out.append(f"  acq. time   {got[0]:.4g} ticks ({got[1]}, no $TIMESTEP)"
                   + (f"; {clock:.4g} s from $BTIM/$ETIM" if clock else ""))
        got = None if clock is None else (clock, "$BTIM/$ETIM")
        secs = None if got is None else got[0]
    elif got is not None:
        secs = got[0]
        out.append(f"  acq. time   {secs:.4g} s (from {got[1]})")
    vol_raw = str(meta.get("$VOL", "") or "").strip()
    if vol_raw:
        vol = _number(vol_raw)
        if vol is None or not vol > 0:
            out.append(f"  $VOL        {vol_raw!r}: not a usable volume ($VOL is {vol_raw})")
        else:
            extra = ""
            if secs:
                extra = f"; {implied_flow_ul_per_min(vol, secs):.3g} uL/min over the acquisition time"
                problem = flow_rate_problem(vol, secs)
                extra += f" (implausible: {problem})" if problem else ""
            out.append(f"  $VOL        {vol_raw} nL{extra}")
    else:
        out.append("  $VOL        (not given)")
    for key in ("$TIMESTEP", "$FLOWRATE"):
        v = str(meta.get(key, "") or "").strip()
        if v:
            out.append(f"  {key:<11} {v}")
    channels = sample.channels if sample is not None else []
    for ch, level, key in triggers(meta, channels):
        out.append(f"  trigger     {ch + ' ' if ch else ''}level {level} ({key})")
    policy, why = default_scale(meta)
    out.append(f"  scale       {policy} (the default: {why}; choose with [flow] scale or read_fcs(scale=))")
    return out


def print_sample(path, k, n_sets, meta, channels, markers, n_events, version, note=None, spill=None, sample=None):
    """Print one data set: header lines, keyword lines, the channel table and the spillover."""
    from .io.fcs import channel_keyword

    head = f"{path}" + (f"  [data set {k + 1} of {n_sets}]" if n_sets > 1 else "")
    print(head)
    print(f"  version     {version}")
    print(f"  instrument  {meta.get('$CYT', '').strip() or '(not given)'}")
    date = " ".join(v for v in (meta.get("$DATE", "").strip(), meta.get("$BTIM", "").strip()) if v)
    if date:
        etim = meta.get("$ETIM", "").strip()
        print(f"  acquired    {date}" + (f" - {etim}" if etim else ""))
    if isinstance(n_events, int):
        print(f"  events      {n_events:,}" + ("  (0 events: an empty data set)" if n_events == 0 else ""))
    else:
        print(f"  events      {n_events}")
    if note:
        print(f"  note        {note}")
    for line in _keyword_lines(meta, sample):
        print(line)
    print(f"  channels    {len(channels)}  ($DATATYPE {meta.get('$DATATYPE', '?').strip()}, "
          f"$BYTEORD {meta.get('$BYTEORD', '?').strip()})")
    rows = []
    for j, (c, m) in enumerate(zip(channels, markers), start=1):
        # the keywords as the file writes them (also for a data set whose events cannot be read)
        rows.append([f"{j:>3}", c, m or ""] + [channel_keyword(meta, j - 1, letter) or "" for _, letter in _COLUMNS])
    keep = [j for j in range(len(_COLUMNS)) if j < 3 or any(r[3 + j] for r in rows)]  # omit empty columns
    titles = ["  #", "$PnN", "$PnS"] + [_COLUMNS[j][0] for j in keep]
    for line in _table([r[:3] + [r[3 + j] for j in keep] for r in rows], titles):
        print(line)
    if spill is not None:
        print(f"  spillover   {spill}")


def _par_or_zero(meta) -> int:
    """$PAR as a count for display; 0 when it is not a whole number (the reader's error says why)."""
    from .io.fcs import _MAX_PAR, _int_kw

    try:
        n = _int_kw(meta, "$PAR", None, required=False, default=0, minimum=0)
    except EvflowError:
        return 0
    return n if n <= _MAX_PAR else 0


def _header_version(path, k: int) -> str:
    if k:
        return "(see the file)"
    with open(path, "rb") as f:
        return f.read(6).decode("ascii", "replace")


def _spill_text(s) -> str | None:
    try:
        sp = s.spillover
    except EvflowError as exc:
        return f"not usable: {exc}"
    if sp is None:
        return None
    text = f"{sp.shape[0]} x {sp.shape[1]} ({sp.attrs['keyword']})"
    if sp.attrs.get("identity"):
        text += ", identity: no compensation stored"
    if sp.attrs.get("labels") == "parameter numbers":
        text += ", labels given as parameter numbers: " + ", ".join(str(x) for x in sp["source"].values)
    else:
        text += ": " + ", ".join(str(x) for x in sp["source"].values)
    return text


def _not_readable(exc) -> str:
    """Why the events cannot be read; for DATA offsets evflow cannot decide between, the option that chooses."""
    choices = getattr(exc, "choices", None)
    if not choices:
        return str(exc)
    (hb, he), (tb, te) = choices["header"], choices["text"]
    return (f"{exc.reason}; if you know which is right, choose it: --data-offsets header reads bytes {hb}-{he}, "
            f"--data-offsets text reads bytes {tb}-{te}")


def fcs_info(path, data_offsets: str = "auto") -> int:
    """Print every data set of an FCS file (its DATA where ``data_offsets`` says, as for :func:`evflow.read_fcs`);
    1 when some data set's events are not readable."""
    from .errors import FCSDataError
    from .io.fcs import _channel_names, count_data_sets, read_fcs, read_fcs_metadata

    status = 0
    n_sets = count_data_sets(path)
    for k in range(n_sets):
        try:
            s = read_fcs(path, data_set=k, data_offsets=data_offsets)
        except FCSDataError as exc:
            # keywords are readable but the events are not: show what the TEXT says
            meta = read_fcs_metadata(path, data_set=k)
            n_par = _par_or_zero(meta)
            channels, markers = _channel_names(meta, n_par, path)
            tot = str(meta.get("$TOT", "?")).strip()
            print_sample(path, k, n_sets, meta, channels, markers, f"{tot} announced, not readable",
                         _header_version(path, k), note=f"events not readable: {_not_readable(exc)}")
            status = 1
            continue
        print_sample(path, k, n_sets, s.meta, s.channels, s.markers, s.n_events, s.version, spill=_spill_text(s),
                     sample=s)
    return status
