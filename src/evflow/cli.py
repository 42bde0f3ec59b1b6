"""The ``evflow`` command line."""

from __future__ import annotations

import argparse
import sys
import warnings

from . import __version__
from .errors import EvflowError


def _info(args) -> int:
    from .io.fcs import count_data_sets, read_fcs

    status = 0
    for i, path in enumerate(args.files):
        if i:
            print()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                n_sets = count_data_sets(path)
                samples = [read_fcs(path, data_set=k) for k in range(n_sets)]
        except EvflowError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        for k, s in enumerate(samples):
            meta = s.meta
            head = f"{path}" + (f"  [data set {k + 1} of {n_sets}]" if n_sets > 1 else "")
            print(head)
            print(f"  version     {s.version}")
            print(f"  instrument  {meta.get('$CYT', '').strip() or '(not given)'}")
            date = " ".join(v for v in (meta.get("$DATE", "").strip(), meta.get("$BTIM", "").strip()) if v)
            if date:
                print(f"  acquired    {date}")
            print(f"  events      {s.n_events:,}")
            print(f"  channels    {s.n_channels}  ($DATATYPE {meta.get('$DATATYPE', '?').strip()}, "
                  f"$BYTEORD {meta.get('$BYTEORD', '?').strip()})")
            width = max(len(c) for c in s.channels) if s.channels else 4
            for j, (c, m) in enumerate(zip(s.channels, s.markers), start=1):
                rng = meta.get(f"$P{j}R", "").strip()
                bits = meta.get(f"$P{j}B", "").strip()
                amp = meta.get(f"$P{j}E", "").strip()
                print(f"    {j:>3}  {c:<{width}}  {m or '':<20} bits {bits:<3} range {rng:<10} $PnE {amp}")
            sp = s.spillover
            if sp is not None:
                print(f"  spillover   {sp.shape[0]} x {sp.shape[1]} ({sp.attrs['keyword']})")
        for w in caught:
            print(f"  warning: {w.message}")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evflow",
        description="Single extracellular-vesicle analysis for nano-flow cytometry and TIRF imaging.",
    )
    parser.add_argument("--version", action="version", version=f"evflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="print what an FCS file holds: version, instrument, events, channels, markers")
    p.add_argument("files", nargs="+", metavar="FILE", help="FCS files")
    p.set_defaults(func=_info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EvflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
