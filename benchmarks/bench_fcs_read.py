"""Benchmark: reading a large FCS file.

Writes an N-event x 12-channel float32 FCS 3.1 file, then times in one run:
``np.fromfile`` of the same bytes (the limit on this machine), evflow's read to
a NumPy array, evflow's chunked dask read reduced to per-channel sums, FlowIO,
and fcsparser (in its own virtual environment, as it needs NumPy < 2; pass
``--fcsparser-python``).  Peak memory of the streaming reduction is measured
in a separate process.  A second case is an FCS 3.2 file of mixed types
(``$PnDATATYPE``: 4 x 16-bit I, 6 x F, 2 x D per event), read to float64 by
evflow, against ``np.fromfile`` with the matching record dtype and
``structured_to_unstructured`` to float64 (the limit); FlowIO does not read ``$PnDATATYPE`` (its time is given
for reference only: the values it returns are wrong).

    python benchmarks/bench_fcs_read.py [--events 10000000] [--fcsparser-python .venv-fcsparser/bin/python]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_of, machine, table  # noqa: E402

import evflow  # noqa: E402

STREAM = """
import sys, time, psutil, numpy as np, dask, dask.array
import evflow, evflow.io.fcs
p = psutil.Process()
base = p.memory_info().rss
s = evflow.read_fcs(sys.argv[1], chunk_events=int(sys.argv[2]))
t0 = time.perf_counter()
peak = [base]
import threading
stop = False
def watch():
    while not stop:
        peak[0] = max(peak[0], p.memory_info().rss)
        time.sleep(0.005)
th = threading.Thread(target=watch); th.start()
tot = s.events.sum(axis=0, dtype=np.float64).compute()
stop = True; th.join()
print(time.perf_counter() - t0, (peak[0] - base) / 2**20, float(tot[0]))
"""

FCSPARSER = """
import sys, time, warnings
warnings.simplefilter("ignore")
import fcsparser, numpy as np
best = 1e9
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    meta, df = fcsparser.parse(sys.argv[1], reformat_meta=False, dtype="float32")
    a = df.values
    best = min(best, time.perf_counter() - t0)
print(best, float(a[:, 0].sum(dtype=np.float64)))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--channels", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-events", type=int, default=1_000_000)
    ap.add_argument("--fcsparser-python", default=None, help="python of a venv with fcsparser (NumPy < 2)")
    ap.add_argument("--no-flowio", action="store_true")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()

    tmp = Path(args.dir or tempfile.mkdtemp(prefix="evflow-bench-"))
    path = tmp / "big.fcs"
    rng = np.random.default_rng(0)
    data = rng.lognormal(5, 1.5, size=(args.events, args.channels)).astype(np.float32)
    evflow.write_fcs(path, data, [f"CH{i}" for i in range(args.channels)])
    s = evflow.read_fcs(path)
    offset = int(s.meta["$BEGINDATA"])
    nbytes = data.nbytes
    ref_sum = float(data[:, 0].sum(dtype=np.float64))
    del data
    rows = []

    def add(name, secs, note=""):
        rows.append((name, f"{secs:.3f}", f"{args.events / secs / 1e6:.1f}", f"{nbytes / secs / 2**30:.2f}", note))

    t_np, a = best_of(lambda: np.fromfile(path, dtype="<f4", count=args.events * args.channels, offset=offset), args.repeat)
    add("np.fromfile (limit)", t_np)
    del a
    t_ev, a = best_of(lambda: evflow.read_fcs(path).to_numpy(), args.repeat)
    assert abs(float(a[:, 0].sum(dtype=np.float64)) - ref_sum) <= 1e-6 * abs(ref_sum)
    add("evflow read_fcs().to_numpy()", t_ev, f"{t_ev / t_np:.2f}x np.fromfile")
    del a
    t_da, tot = best_of(lambda: evflow.read_fcs(path, chunk_events=args.chunk_events).events.sum(axis=0, dtype=np.float64).compute(), args.repeat)
    add(f"evflow dask sum, {args.chunk_events:,}-event chunks", t_da, "streamed")

    out = subprocess.run([sys.executable, "-c", STREAM, str(path), str(args.chunk_events)], capture_output=True, text=True, check=True)
    t_stream, peak_mib, _ = (float(x) for x in out.stdout.split())
    chunk_mib = args.chunk_events * args.channels * 4 / 2**20

    if not args.no_flowio:
        import flowio

        t_fio, a = best_of(lambda: flowio.FlowData(str(path)).as_array(preprocess=False), 1)
        assert abs(float(a[:, 0].sum()) - ref_sum) <= 1e-6 * abs(ref_sum)
        add("FlowIO FlowData().as_array()", t_fio, f"evflow {t_fio / t_ev:.1f}x faster")
        del a
    if args.fcsparser_python:
        out = subprocess.run([args.fcsparser_python, "-c", FCSPARSER, str(path), str(args.repeat)], capture_output=True, text=True)
        if out.returncode == 0:
            t_fp, s0 = (float(x) for x in out.stdout.split())
            assert abs(s0 - ref_sum) <= 1e-3 * abs(ref_sum)
            add("fcsparser.parse()", t_fp, f"evflow {t_fp / t_ev:.1f}x faster")
        else:
            rows.append(("fcsparser.parse()", "failed", "", "", out.stderr.strip().splitlines()[-1][:80]))

    print(f"FCS read: {args.events:,} events x {args.channels} channels float32 ({nbytes / 2**20:.0f} MiB), "
          f"file in page cache, best of {args.repeat}; {machine()}\n")
    print(table(["reader", "time (s)", "Mevents/s", "GiB/s", "note"], rows))
    print(f"\nStreaming per-channel sum through the dask array: peak RSS grew by {peak_mib:.0f} MiB for a "
          f"{nbytes / 2**20:.0f} MiB file ({chunk_mib:.0f} MiB chunks, {os.cpu_count()} threads), {t_stream:.2f} s.")
    path.unlink()
    mixed_case(tmp, args)


def mixed_case(tmp: Path, args) -> None:
    """An FCS 3.2 file whose events mix I, F and D ($PnDATATYPE)."""
    n, kinds = args.events, ["I"] * 4 + ["F"] * 6 + ["D"] * 2
    rng = np.random.default_rng(1)
    data = np.empty((n, len(kinds)))
    data[:, :4] = rng.integers(0, 1024, size=(n, 4))
    data[:, 4:10] = rng.lognormal(5, 1.5, size=(n, 6)).astype(np.float32)
    data[:, 10:] = rng.normal(0, 1e6, size=(n, 2))
    path = tmp / "mixed32.fcs"
    evflow.write_fcs(path, data, [f"CH{i}" for i in range(len(kinds))], version="3.2", datatypes=kinds,
                     ranges=[1024] * 4 + [262144] * 8)
    s = evflow.read_fcs(path)
    offset, rb = int(s.meta["$BEGINDATA"]), 4 * 2 + 6 * 4 + 2 * 8
    rec = np.dtype([(f"c{i}", f) for i, f in enumerate(["<u2"] * 4 + ["<f4"] * 6 + ["<f8"] * 2)])
    nbytes = n * rb
    rows = []

    def add(name, secs, note=""):
        rows.append((name, f"{secs:.3f}", f"{n / secs / 1e6:.1f}", f"{nbytes / secs / 2**30:.2f}", note))

    def fromfile():
        from numpy.lib.recfunctions import structured_to_unstructured

        return structured_to_unstructured(np.fromfile(path, dtype=rec, count=n, offset=offset), dtype=np.float64)

    t_np, a = best_of(fromfile, args.repeat)
    add("np.fromfile record dtype + structured_to_unstructured (limit)", t_np)
    t_ev, b = best_of(lambda: evflow.read_fcs(path).to_numpy(), args.repeat)
    assert np.array_equal(a, b) and np.array_equal(b, data)
    add("evflow read_fcs().to_numpy()", t_ev, f"{t_ev / t_np:.2f}x np.fromfile")
    del a, b
    t_da, _ = best_of(lambda: evflow.read_fcs(path, chunk_events=args.chunk_events).events.sum(axis=0).compute(),
                      args.repeat)
    add(f"evflow dask sum, {args.chunk_events:,}-event chunks", t_da, "streamed")
    if not args.no_flowio:
        import warnings

        import flowio

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_fio, c = best_of(lambda: flowio.FlowData(str(path)).as_array(preprocess=False), 1)
        ok = np.array_equal(np.asarray(c, dtype=np.float64), data)
        add("FlowIO FlowData().as_array()", t_fio, "values equal" if ok else "wrong values: ignores $PnDATATYPE")
    print(f"\nFCS 3.2 mixed types: {n:,} events x {len(kinds)} channels (4 I16, 6 F, 2 D; {nbytes / 2**20:.0f} MiB), "
          f"best of {args.repeat}\n")
    print(table(["reader", "time (s)", "Mevents/s", "GiB/s", "note"], rows))
    path.unlink()


if __name__ == "__main__":
    main()
