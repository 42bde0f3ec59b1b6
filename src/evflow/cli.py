"""The ``evflow`` command line."""

from __future__ import annotations

import argparse
import sys
import warnings

from . import __version__
from ._cli_export import add_export_parser
from .errors import EvflowError


def _image_info(path) -> None:
    from .io.image_info import describe_image, format_image_info

    print(format_image_info(path, describe_image(path)))


def _info(args) -> int:
    from pathlib import Path

    from .cli_fcs import fcs_info
    from .io.fcs import chain_cache
    from .io.image_info import format_microscope_info, is_tiff
    from .io.images import BIOIO_SUFFIXES

    status = 0
    for i, path in enumerate(args.files):
        if i:
            print()
        with warnings.catch_warnings(record=True) as caught, chain_cache():
            warnings.simplefilter("always")
            try:
                if is_tiff(path):
                    _image_info(path)
                elif Path(path).suffix.lower() in BIOIO_SUFFIXES:
                    print(format_microscope_info(path))
                else:
                    status = max(status, fcs_info(path, args.data_offsets))
            except EvflowError as exc:
                print(f"error: {exc}", file=sys.stderr)
                status = 1
            except Exception as exc:  # a reader bug: one line for this file, the other files go on
                if args.debug:
                    raise
                print(f"error: {path}: unexpected {_one_line(exc)} (run with --debug for the traceback)",
                      file=sys.stderr)
                status = 1
        seen = set()
        for w in caught:  # FCS quirks and image metadata alike; one quirk once, however many segments show it
            if str(w.message) not in seen:
                seen.add(str(w.message))
                print(f"  warning: {w.message}")
    return status


def _validate(args) -> int:
    from .pipeline.config import load_experiment

    exp = load_experiment(args.experiment, check_files=not args.no_files)
    roles = {}
    for s in exp.samples:
        roles[s.role] = roles.get(s.role, 0) + 1
    n_flow = sum(1 for s in exp.samples if s.flow is not None)
    n_img = sum(len(s.images) for s in exp.samples)
    print(f"{args.experiment}: valid")
    print(f"  experiment  {exp.name}")
    print(f"  samples     {len(exp.samples)} (" + ", ".join(f"{n} {r}" for r, n in sorted(roles.items())) + ")")
    print(f"  inputs      {n_flow} flow file(s), {n_img} image file(s)"
          + ("" if not args.no_files else "  (files not checked)"))
    print(f"  output      {exp.output}")
    return 0


def _run(args) -> int:
    from .pipeline import run

    ds = run(args.experiment, output=args.out, backend=args.backend, scheduler=args.scheduler,
             resume=args.resume, quiet=args.quiet, verbose=args.verbose,
             progress=False if args.quiet else None, n_workers=args.workers, force=args.force)
    return 0 if ds.attrs.get("failed", "{}") == "{}" else 3


def _demo(args) -> int:
    import pandas as pd

    from .pipeline.demo import demo

    ds, table = demo(args.out, n_events=args.events, n_fields=args.fields, field_shape=(args.field_px, args.field_px),
                     scheduler=args.scheduler, backend=args.backend, quiet=args.quiet, verbose=args.verbose,
                     progress=False if args.quiet else None, force=args.force)
    with pd.option_context("display.width", 140, "display.max_rows", 500, "display.float_format", "{:.4g}".format):
        print("Recovered versus true (flow: parent gate 80-400 nm; concentration per mL of undiluted sample)")
        print(table.to_string(index=False))
    print(f"\nreport: {args.out}/report.html  results: {args.out}/results.zarr  tables: {args.out}/counts.csv")
    return 0 if ds.attrs.get("failed", "{}") == "{}" else 3


def _add_run_options(p):
    p.add_argument("--backend", choices=("auto", "numpy", "cupy"), default=None,
                   help="array backend (default: the experiment's, else auto)")
    p.add_argument("--scheduler", default=None, metavar="S",
                   help="threads (default), processes, local-cuda, or tcp://host:port of a running dask scheduler")
    p.add_argument("--workers", type=int, default=None, help="worker processes for --scheduler processes")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.add_argument("-v", "--verbose", action="store_true", help="also one line per sample, field and control")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty folder evflow did not create (beside its files; evflow never "
                        "deletes or replaces files it did not write)")


def _add_debug(p):
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="on an error, print the Python traceback")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evflow",
        description="Single extracellular-vesicle analysis for nano-flow cytometry and TIRF imaging.",
        epilog="exit codes: 0 success; 1 bad input (the message names the file and key); 2 wrong command line; "
               "3 the run finished but some samples or fields failed (listed); 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"evflow {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, print the Python traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="print what an FCS or TIFF file holds: version, instrument, events, channels, "
                                    "markers; or image series, shape, channels, pixel size")
    p.add_argument("files", nargs="+", metavar="FILE", help="FCS or TIFF/OME-TIFF files")
    p.add_argument("--data-offsets", choices=("auto", "header", "text"), default="auto",
                   help="where an FCS file's DATA lies when its HEADER and TEXT disagree (default: auto, decided "
                        "from the file; see evflow.read_fcs)")
    _add_debug(p)
    p.set_defaults(func=_info)
    p = sub.add_parser("validate", help="check an experiment file and its inputs (every problem at once); "
                                        "computes nothing")
    p.add_argument("experiment", metavar="EXPERIMENT", help="experiment file (.toml or .yaml)")
    p.add_argument("--no-files", action="store_true", help="check the file's keys and values only, not the inputs")
    _add_debug(p)
    p.set_defaults(func=_validate)
    p = sub.add_parser("run", help="run an experiment file (TOML/YAML): results.zarr, tables, report.html")
    p.add_argument("experiment", metavar="EXPERIMENT", help="experiment file (.toml or .yaml)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: the experiment's 'output')")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse results whose inputs and settings are unchanged (default: on)")
    _add_run_options(p)
    _add_debug(p)
    p.set_defaults(func=_run)
    p = sub.add_parser("demo", help="build a synthetic EV experiment with known truth, run it and compare")
    p.add_argument("--out", default="evflow-demo", metavar="DIR", help="output folder (default: evflow-demo)")
    p.add_argument("--events", type=int, default=200_000, help="events per flow sample (default 200000)")
    p.add_argument("--fields", type=int, default=2, help="image fields per sample (default 2)")
    p.add_argument("--field-px", type=int, default=512, help="field size in px (default 512)")
    _add_run_options(p)
    _add_debug(p)
    p.set_defaults(func=_demo)
    add_export_parser(sub, _add_debug)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a traceback (unless --debug)
        if args.debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        if not isinstance(exc, EvflowError):
            print("(an unexpected error; run with --debug for the traceback)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, EvflowError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
