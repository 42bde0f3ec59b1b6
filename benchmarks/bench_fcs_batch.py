"""Benchmark: reading many small FCS files, as a batch of samples does.

Writes ``--files`` FCS 3.1 files of ``--events`` events x 12 float32 channels (a
nano-flow acquisition each), then times reading every file to a NumPy array of
its events, in one process and one thread, with: evflow (``read_fcs(p).to_numpy()``,
which parses HEADER and TEXT, checks the offsets and decodes DATA), FlowIO
(``FlowData(p).as_array(preprocess=False)``), and fcsparser in its own virtual
environment (it needs NumPy < 2; pass ``--fcsparser-python``).  Every reader's
events are checked against the written values (a per-file sum), so a fast wrong
read cannot win.  Files are in the page cache (written just before).

    python benchmarks/bench_fcs_batch.py [--files 1000] [--events 20000] [--fcsparser-python PY]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, table  # noqa: E402

import evflow  # noqa: E402

FCSPARSER = """
import sys, time, warnings
warnings.simplefilter("ignore")
import fcsparser, numpy as np
paths = sys.argv[1:]
fcsparser.parse(paths[0], reformat_meta=False, dtype="float32")
t0 = time.perf_counter()
sums = [float(fcsparser.parse(p, reformat_meta=False, dtype="float32")[1].to_numpy()[:, 0].sum(dtype=np.float64))
        for p in paths]
print(time.perf_counter() - t0)
print(" ".join(repr(s) for s in sums))
"""


def _timed(read, paths):
    read(paths[0])  # imports and first-call costs out of the timing (a batch pays them once)
    t0 = time.perf_counter()
    sums = [float(read(p)[:, 0].sum(dtype=np.float64)) for p in paths]
    return time.perf_counter() - t0, np.array(sums)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--channels", type=int, default=12)
    ap.add_argument("--fcsparser-python", default=None, help="python of a venv with fcsparser (NumPy < 2)")
    ap.add_argument("--no-flowio", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="evflow-batch-"))
    try:
        rng = np.random.default_rng(0)
        channels = [f"CH{i}-H" for i in range(args.channels)]
        paths, ref = [], []
        for i in range(args.files):
            data = rng.lognormal(5, 1.5, size=(args.events, args.channels)).astype(np.float32)
            p = tmp / f"s{i:04d}.fcs"
            evflow.write_fcs(p, data, channels)
            paths.append(str(p))
            ref.append(float(data[:, 0].sum(dtype=np.float64)))
        ref = np.array(ref)
        mib = args.files * args.events * args.channels * 4 / 2**20
        rows = []

        def add(name, secs, sums, note=""):
            ok = np.allclose(sums, ref, rtol=1e-6)
            rows.append((name, f"{secs:.2f}", f"{args.files / secs:.0f}", f"{mib / secs:.0f}",
                         note if ok else "WRONG VALUES"))

        t_ev, s_ev = _timed(lambda p: evflow.read_fcs(p).to_numpy(), paths)
        add("evflow read_fcs().to_numpy()", t_ev, s_ev)
        if not args.no_flowio:
            import flowio

            t_fio, s_fio = _timed(lambda p: flowio.FlowData(p).as_array(preprocess=False), paths)
            add("FlowIO FlowData().as_array()", t_fio, s_fio, f"evflow {t_fio / t_ev:.1f}x faster")
        if args.fcsparser_python:
            out = subprocess.run([args.fcsparser_python, "-c", FCSPARSER, *paths], capture_output=True, text=True)
            if out.returncode == 0:
                lines = out.stdout.split("\n")
                t_fp = float(lines[0])
                add("fcsparser.parse()", t_fp, np.array([float(x) for x in lines[1].split()]),
                    f"evflow {t_fp / t_ev:.1f}x faster")
            else:
                rows.append(("fcsparser.parse()", "failed", "", "", out.stderr.strip().splitlines()[-1][:80]))
        print(f"FCS batch read: {args.files:,} files x {args.events:,} events x {args.channels} channels float32 "
              f"({mib:.0f} MiB in all), one thread, files in page cache, first-call imports not timed; {machine()}\n")
        print(table(["reader", "time (s)", "files/s", "MiB/s", "note"], rows))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
