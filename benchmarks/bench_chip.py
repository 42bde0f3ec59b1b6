"""Benchmark: a chip of 3-colour TIRF fields (multi-position OME-TIFF) through ``evflow.run``, against the kernels.

Writes a synthetic chip with :func:`evflow.synth.tirf` (``--fields`` fields of
``--size`` px squared, 3 channels, uint16 sCMOS ADU) as multi-position
OME-TIFF files of ``--per-file`` positions each (the reader makes each
position a field; an experiment lists the files with one glob), plus a
registration-bead field, then in one run times:

- the kernels alone: :func:`evflow.imaging.count.phenotype_field` (detect_spots
  in every channel + registration of the positions + colocalisation/merge +
  photons per marker) on fields already in memory, on the same number of
  threads as the pipeline, over ``--kernel-fields`` of the chip's fields;
- the pipeline (``evflow.run``, imaging only) on the threaded scheduler;
- the pipeline on a ``distributed.LocalCluster`` of ``--workers`` processes
  (``scheduler="processes"``, as ``evflow run --scheduler processes``), with
  the peak resident memory of each worker.

The table gives fields/s of the field stage, its ratio to the kernels (kernel
fields/s over pipeline fields/s: 1.0 = no overhead), the share of the field
tasks' time per stage (read, register, detect, colocalise, QC + thumbnail,
write), the rest of the run (calibration, assembling and writing the
outputs and the report) and peak memory.

    python benchmarks/bench_chip.py                       # 400 fields of 2048x2048 x 3 (about 10 GB of TIFF)
    python benchmarks/bench_chip.py --fields 20 --per-file 10 --kernel-fields 6   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import load, machine, table  # noqa: E402

MARKERS = ["CD9", "CD63", "CD81"]
OFFSET, GAIN = 100.0, 2.0
STAGES = ("read", "register", "detect", "colocalise", "other", "qc", "write")
OTHER = ("check", "refit", "hash")  # field checks, width refit in the brightest channel, file digest


def _synth_kw(size):
    return dict(shape=(size, size), markers=MARKERS, camera="scmos", offset=OFFSET, gain=GAIN, photons=1500.0,
                min_separation_px=6.0, edge_margin_px=4.0)


def build(root: Path, n_fields: int, size: int, per_file: int, distinct: int = 0, seed: int = 6) -> list[Path]:
    """The chip's OME-TIFF files (``per_file`` positions each) and a registration-bead field.

    ``distinct`` > 0: only that many fields are simulated and the chip repeats them in order (position k holds
    field k mod ``distinct``; a 2048x2048 x 3 field takes seconds to simulate)."""
    import tifffile

    from evflow.synth import tirf

    img = root / "images"
    img.mkdir(parents=True, exist_ok=True)
    reg = tirf(n_vesicles=max(80, size * size // 50000), phenotype_fractions={7: 1.0}, seed=5,
               **{**_synth_kw(size), "photons": 4000.0})
    tifffile.imwrite(img / "beads.tif", reg.images.values[0])
    files, k, made = [], 0, {}
    for j in range(0, n_fields, per_file):
        n = min(per_file, n_fields - j)
        path = img / f"chip_{j // per_file:03d}.ome.tif"
        with tifffile.TiffWriter(path, ome=True, bigtiff=True) as tw:
            for _ in range(n):  # one field at a time: the chip is never in memory
                j_sim = k % distinct if distinct > 0 else k
                a = made.get(j_sim)
                if a is None:
                    a = tirf(seed=seed * 100_003 + j_sim, **_synth_kw(size)).images.values[0]
                    if distinct > 0:
                        made[j_sim] = a
                x, y = 250.0 * (k % 20), 250.0 * (k // 20)
                tw.write(a, photometric="minisblack", metadata={
                    "axes": "CYX", "Name": f"pos{k}", "PhysicalSizeX": 0.108, "PhysicalSizeY": 0.108,
                    "Channel": {"Name": MARKERS}, "Plane": {"PositionX": [x] * 3, "PositionY": [y] * 3}})
                k += 1
        files.append(path)
    return files


def write_experiment(root: Path) -> Path:
    lines = ["[experiment]", 'name = "chip benchmark"',
             "[imaging]", f"channels = {json.dumps(MARKERS)}", "pixel_size_nm = 108.0", "psf_sigma_px = 1.3",
             f"camera_offset = {OFFSET}", f"camera_gain = {GAIN}", 'registration_beads = "images/beads.tif"',
             "[[samples]]", 'name = "chip"', 'images = ["images/chip_*.ome.tif"]']
    p = root / "experiment.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def kernels(files, n_fields, n_threads, registration):
    """Seconds per field of the kernels alone (fields read beforehand, ``n_threads`` at once) and their tables."""
    from evflow import read_images
    from evflow.imaging.camera import Camera
    from evflow.imaging.count import phenotype_field
    from evflow.imaging.register import ChannelRegistration

    im = read_images([str(f) for f in files], markers=MARKERS)
    idx = np.unique(np.linspace(0, im.sizes["fov"] - 1, n_fields).round().astype(int))
    fields = [np.asarray(im.isel(fov=int(i)).values) for i in idx]
    reg = ChannelRegistration.from_dict(registration)

    cam = Camera(offset=OFFSET, gain=GAIN)

    def one(raw):
        ph = cam.to_photons(raw)
        return phenotype_field(ph, MARKERS, registration=reg, psf_sigma_px=1.3, merge_radius_px=1.5,
                               detect_kwargs={"false_positives": 0.1, "exclude_border_px": 2,
                                              "saturation": (65535 - OFFSET) / GAIN})

    one(fields[0])  # warm-up (Numba caches, FFT plans)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_threads) as ex:
        out = list(ex.map(one, fields))
    return (time.perf_counter() - t0) / len(fields), dict(zip(idx.tolist(), out))


class PeakRSS:
    """Peak resident memory (bytes) of this process, sampled every 50 ms in a thread."""

    def __init__(self, pids=None):
        import psutil

        self.procs = [psutil.Process(p) for p in (pids or [os.getpid()])]
        self.peak = [0] * len(self.procs)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            for i, p in enumerate(self.procs):
                try:
                    self.peak[i] = max(self.peak[i], p.memory_info().rss)
                except Exception:  # noqa: BLE001 - a finished process
                    pass
            self._stop.wait(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _worker_peak(dask_worker):
    return dask_worker._evflow_peak if hasattr(dask_worker, "_evflow_peak") else 0


def _start_worker_sampler(dask_worker):
    import psutil

    proc = psutil.Process()
    dask_worker._evflow_peak = proc.memory_info().rss

    def loop():
        while True:
            dask_worker._evflow_peak = max(dask_worker._evflow_peak, proc.memory_info().rss)
            time.sleep(0.05)

    threading.Thread(target=loop, daemon=True).start()
    return os.getpid()


def stage_shares(tim) -> dict:
    """Seconds per stage summed over the field tasks (the run's ``image_step_s``)."""
    st = tim.get("image_step_s", {})
    out = {s: float(st.get(s, 0.0)) for s in STAGES if s != "other"}
    out["other"] = sum(float(st.get(s, 0.0)) for s in OTHER)
    return out


def pipeline(exp, out, scheduler):
    """Run the experiment; (wall s, field-stage s, image items, timings)."""
    from evflow import run
    from evflow.pipeline.store import ResultStore

    t0 = time.perf_counter()
    ds = run(exp, output=out, resume=False, quiet=True, scheduler=scheduler, report=True)
    wall = time.perf_counter() - t0
    tim = json.loads(ds.attrs["_timings"])
    store = ResultStore(out)
    n = int(ds.sizes.get("fov", 0))
    items = [store.load("image", f"chip-fov{i}") for i in range(n)]
    return wall, tim, [it for it in items if it is not None], ds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=400)
    ap.add_argument("--size", type=int, default=2048, help="field size (px, square)")
    ap.add_argument("--per-file", type=int, default=50, help="positions per OME-TIFF file")
    ap.add_argument("--distinct", type=int, default=20,
                    help="fields simulated (the chip repeats them; 0: every field simulated)")
    ap.add_argument("--kernel-fields", type=int, default=40, help="fields the kernels are timed on")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-cluster", action="store_true")
    ap.add_argument("--keep", default=None, help="write (or reuse) the chip in this folder and keep it")
    a = ap.parse_args(argv)
    load_before = load()

    import dask

    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="evflow-chip-"))
    t0 = time.perf_counter()
    files = sorted((root / "images").glob("chip_*.ome.tif")) if a.keep else []
    if not files:
        files = build(root, a.fields, a.size, a.per_file, a.distinct)
    t_build = time.perf_counter() - t0
    exp = write_experiment(root)
    rows = []
    dask.config.set(num_workers=a.threads)

    with PeakRSS() as mem_t:
        wall_t, tim_t, items_t, ds_t = pipeline(exp, root / "out_threads", "threads")
    n = len(items_t)
    from evflow.pipeline.store import ResultStore

    reg = ResultStore(root / "out_threads").load("calibration", "registration")
    k_s, k_tables = kernels(files, min(a.kernel_fields, n), a.threads, reg)
    k_fps = 1.0 / k_s
    runs = [("threads", f"threads ({a.threads})", wall_t, tim_t, items_t, f"{mem_t.peak[0] / 2**30:.2f} (process)")]

    if not a.no_cluster:
        import distributed

        from evflow.pipeline.scheduler import LOCAL_HOST, WORKER_MMAP_THRESHOLD

        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": WORKER_MMAP_THRESHOLD}):
            with distributed.LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True, host=LOCAL_HOST,
                                          dashboard_address=f"{LOCAL_HOST}:0") as cluster, \
                    distributed.Client(cluster) as client:
                client.run(_start_worker_sampler)
                wall_c, tim_c, items_c, ds_c = pipeline(exp, root / "out_cluster", client)
                peaks = client.run(_worker_peak)
        same = bool((ds_t["image_count"] == ds_c["image_count"]).all())
        runs.append(("cluster", f"LocalCluster ({a.workers} processes)", wall_c, tim_c, items_c,
                     " / ".join(f"{v / 2**30:.2f}" for v in peaks.values()) + " (per worker)"))
    for _key, label, wall, tim, items, mem in runs:
        sh = stage_shares(tim)
        fps = len(items) / tim["samples_s"]
        busy = sum(sh.values())
        shares = " / ".join(f"{100 * sh[s] / busy:.0f}" for s in STAGES)
        rest = (f"{tim['calibration_s']:.0f} + {tim['outputs_s']:.0f} + "
                f"{wall - tim['calibration_s'] - tim['samples_s'] - tim['outputs_s']:.0f}")
        rows.append([label, f"{fps:.3f}", f"{k_fps / fps:.2f}", shares, rest, f"{wall:.0f}", mem])
    rows.insert(0, [f"kernels alone ({a.threads} threads, fields in memory)", f"{k_fps:.3f}", "1.00",
                    "-", "-", "-", "-"])

    # per-field tables of the pipeline against the kernels on the same fields
    from evflow.pipeline.imaging import spots_table

    st = spots_table({("chip", i): it for i, it in enumerate(items_t)}, MARKERS)
    equal = True
    for i, kt in k_tables.items():
        p = st[st["fov"] == i]
        equal &= len(p) == len(kt) and np.allclose(p[["y", "x"]].to_numpy(), kt[["y", "x"]].to_numpy()) and bool(
            (p["bitmask"].to_numpy() == kt["bitmask"].to_numpy()).all())
    print(f"# evflow chip benchmark\n\n{machine()}; {load_before} before the runs, {load()} after\n")
    print(f"{n} fields of {a.size}x{a.size} px x 3 channels (uint16) in {len(files)} multi-position OME-TIFF files "
          f"({sum(os.path.getsize(f) for f in files) / 2**30:.1f} GiB); chip written in {t_build:.0f} s\n")
    print(table(["run", "fields/s (field stage)", "ratio to kernels",
                 "share of field task time % (" + " / ".join(STAGES) + ")",
                 "rest of run (s): calibration + outputs & report + validation", "whole run (s)",
                 "peak memory (GiB)"], rows))
    print()
    print(f"- kernels: phenotype_field (detect_spots x 3 channels, registration, merge, photons per marker) on "
          f"{len(k_tables)} of the fields, read beforehand: {k_s:.3f} s per field on {a.threads} threads")
    print(f"- share 'other': {', '.join(OTHER)} (field checks, the width refit in each vesicle's brightest "
          "channel, the file's SHA-256); 'register': mapping positions between channels (the bead registration "
          "itself is in calibration)")
    print(f"- pipeline per-field tables equal to the kernels' on those fields: {bool(equal)}")
    if not a.no_cluster:
        print(f"- threads and LocalCluster image counts identical: {same}")
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
