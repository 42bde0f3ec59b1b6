"""``evflow export``: a sample's events with calibrated, gate and phenotype channels as FCS."""

from __future__ import annotations

import json

from .errors import ConfigError


def add_export_parser(sub, add_debug) -> None:
    p = sub.add_parser("export", help="write a sample's events as FCS with added channels: MESF per calibrated "
                                      "channel, diameter_nm, 0/1 per gate, phenotype bitmask")
    p.add_argument("fcs", metavar="FILE", help="the sample's FCS file")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output FCS file")
    p.add_argument("--gates", metavar="GATES", help="Gating-ML 2.0 file or FlowJo workspace (.wsp); one channel per gate")
    p.add_argument("--flowjo-sample", metavar="NAME", help="sample of the workspace whose gates to use "
                                                           "(default: the group's first sample)")
    p.add_argument("--gate", action="append", metavar="ID", help="export only this gate (repeatable)")
    p.add_argument("--mesf", action="append", metavar="CAL.json",
                   help="a fluorescence calibration saved with MESFCalibration.to_dict() (repeatable)")
    p.add_argument("--beads", metavar="BEADS.fcs", help="calibrate on these beads first (with --bead-channel, --bead-values)")
    p.add_argument("--bead-channel", metavar="CH", help="channel the bead values are for")
    p.add_argument("--bead-values", metavar="V1,V2,...", help="MESF/MEFL values of the peaks, dimmest first")
    p.add_argument("--bead-units", default="MESF", metavar="UNITS", help="unit name (default MESF)")
    p.add_argument("--clustering-channels", metavar="CH1,CH2", help="channels the bead peaks are clustered on")
    p.add_argument("--scatter-channels", metavar="FSC,SSC", help="scatter channels of the singlet-bead gate")
    p.add_argument("--size", metavar="CAL.json", help="a size calibration saved with ScatterCalibration.to_dict()")
    p.add_argument("--marker", action="append", metavar="NAME=CH:THRESHOLD",
                   help="a marker of the phenotype bitmask, threshold in linear channel units (repeatable)")
    p.add_argument("--fcs-version", default="3.1", choices=("3.1", "3.2"), help="FCS version written (default 3.1)")
    add_debug(p)
    p.set_defaults(func=_export)


def _json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc})") from None


def _csv(text):
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _export(args) -> int:
    from .flow.calibration import MESFCalibration, ScatterCalibration, calibrate_mesf
    from .flow.export import export_fcs
    from .io.fcs import read_fcs

    sample = read_fcs(args.fcs)
    mesf = [MESFCalibration.from_dict(_json(p, "MESF calibration")) for p in args.mesf or ()]
    if args.beads:
        if not (args.bead_channel and args.bead_values):
            raise ConfigError("--beads needs --bead-channel and --bead-values")
        try:
            values = [float(v) for v in _csv(args.bead_values)]
        except ValueError:
            raise ConfigError(f"--bead-values {args.bead_values!r}: expected numbers separated by commas") from None
        kw = {}
        if args.clustering_channels:
            kw["clustering_channels"] = _csv(args.clustering_channels)
        if args.scatter_channels:
            kw["scatter_channels"] = _csv(args.scatter_channels)
        mesf.append(calibrate_mesf(args.beads, args.bead_channel, values, units=args.bead_units, **kw))
    size = ScatterCalibration.from_dict(_json(args.size, "size calibration")) if args.size else None
    markers = {}
    for m in args.marker or ():
        name, sep, rest = m.partition("=")
        ch, sep2, thr = rest.rpartition(":")
        try:
            markers[name.strip()] = (ch.strip(), float(thr))
        except ValueError:
            sep2 = ""
        if not (sep and sep2 and name.strip() and ch.strip()):
            raise ConfigError(f"--marker {m!r}: expected NAME=CHANNEL:THRESHOLD, e.g. CD63=FL1-H:1200")
    gating = None
    if args.gates:
        from .flow.flowjo import read_flowjo, read_gates_file

        if args.flowjo_sample:
            strategy = read_flowjo(args.gates, sample=args.flowjo_sample)
        else:
            strategy = read_gates_file(args.gates)
        gating = strategy.apply(sample, gate_ids=args.gate)
    out = export_fcs(sample, args.out, gating=gating, mesf=mesf, size=size, markers=markers or None,
                     version=args.fcs_version)
    n_added = len(mesf) + (size is not None) + (len(gating.gate_ids) if gating else 0) + bool(markers)
    print(f"{out}: {sample.n_events:,} events, {len(sample.channels)} channels + {n_added} added")
    return 0
