"""Calibration benchmark: evflow vs FlowCal (MEFL beads) and vs miepython (Mie).

Prints Markdown tables:

1. bead calibration on the real FlowCal bead files: wall time and the largest
   difference in peak medians and in the converted MEFL over the channel range;
1b. rainbow beads (25,000 events, Apogee- and Aurora-like channel names, 6
   published values for 8 populations): wall time to fail with the values as
   given, to succeed with ``placement="best"``, and the error against the truth;
2. converting N events to MEFL: evflow (NumPy, dask) vs FlowCal's standard curve;
3. scatter cross-sections: evflow's Mie (collected over a side-scatter cone,
   and total) vs miepython's total scattering efficiency, per diameter.

Usage: ``python benchmarks/bench_calibration.py [--events 10000000] [--diameters 200]``
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, machine, table  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "beads" / "flowcal"
MEFL_A = [0, 792, 2079, 6588, 16471, 47497, 137049, 271647]
MEFL_B = [0, 771, 2106, 6262, 15183, 45292, 136258, 291042]
FILES = [("sample001.fcs", MEFL_A), ("max/sample002.fcs", MEFL_A), ("min/sample001.fcs", MEFL_B)]


def flowcal_calibrate(path, mefl):
    import FlowCal

    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = FlowCal.transform.to_rfi(FlowCal.io.FCSData(str(path)))
        s = FlowCal.gate.start_end(s, num_start=250, num_end=100)
        s = FlowCal.gate.high_low(s, channels=["FSC", "SSC"])
        s = FlowCal.gate.density2d(s, channels=["FSC", "SSC"], gate_fraction=0.3, sigma=5.0)
        return FlowCal.mef.get_transform_fxn(
            s, mef_values=np.array(mefl), mef_channels="FL1", clustering_channels=["FL1", "FL3"], full_output=True
        )


def rainbow(repeat):
    """Synthetic 8-peak rainbow beads as an Apogee A60-Micro and a Cytek Aurora write them."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import rainbow_beads as rb

    from evflow.errors import CalibrationError
    from evflow.flow.calibration import calibrate_mesf

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, names, ch, scale in (("Apogee-like", rb.APOGEE, "638-Red", 1.0),
                                        ("Aurora-like", rb.AURORA, "R1-A", 0.3)):
            path = rb.write_rainbow(Path(tmp) / f"{label}.fcs", names, n=25_000)

            def fail():
                try:
                    calibrate_mesf(path, ch, rb.PUBLISHED_6)
                except CalibrationError as e:
                    return str(e)
                return "no error"

            t_err, msg = best_of(fail, repeat)
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                t_ok, cal = best_of(lambda: calibrate_mesf(path, ch, rb.PUBLISHED_6, placement="best"), repeat)
            x = rb.truth_channel(rb.TRUE_MESF[1:6])
            err = np.max(np.abs(cal.to_mesf(scale * x) / (np.exp(rb.B) * x**rb.M) - 1))
            flags = [k for k in ("ambiguous_placement", "large_residuals", "blank_brighter") if cal.qc[k]]
            rows.append([label, f"{t_err:.2f}", "found 8" in msg, f"{t_ok:.2f}", cal.qc["placement"],
                         f"{err:.2%}", ", ".join(flags) or "-", len({str(x.message) for x in w})])
    print("### Rainbow beads, 25,000 events, 6 published values for 8 populations\n")
    print(table(["file", "error s", "error names counts", "placement='best' s", "placement", "max MESF error",
                 "QC flags", "warnings"], rows))
    print()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5_000_000, help="events converted to MEFL")
    ap.add_argument("--diameters", type=int, default=200, help="diameters in the Mie comparison")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    import dask.array as da

    from evflow.flow.calibration import calibrate_mesf
    from evflow.flow.mie import POLYSTYRENE, Detector, collected_cross_section, scattering_cross_section

    print(f"Machine: {machine()}\n")
    rows = []
    cal = ref = None
    if DATA.is_dir():
        for name, mefl in FILES:
            path = DATA / name
            t_fc, ref = best_of(lambda: flowcal_calibrate(path, mefl), args.repeat)
            t_ev, cal = best_of(lambda: calibrate_mesf(path, "FL1", mefl, ["FL1", "FL3"], ["FSC", "SSC"]), args.repeat)
            peak = np.max(np.abs(cal.peak_medians / ref.statistic["values"][0] - 1))
            x = np.geomspace(1, 9900, 200)
            conv = np.max(np.abs(cal.to_mesf(x) / ref.fitting["std_crv"][0](x) - 1))
            rows.append([name, f"{t_ev * 1e3:.0f}", f"{t_fc * 1e3:.0f}", f"{peak:.2e}", f"{conv:.2e}",
                         f"{np.isfinite(cal.peaks).sum()}/{len(ref.selection['rfi'][0])}"])
        print("### MEFL bead calibration (FL1, clustering on FL1+FL3)\n")
        print(table(["file", "evflow ms", "FlowCal ms", "max peak diff", "max MEFL diff", "peaks used (evflow/FlowCal)"], rows))
        print()
    else:
        print(f"(bead files not found at {DATA}; skipping the FlowCal comparison)\n")

    rainbow(args.repeat)

    if cal is not None:
        x = np.random.default_rng(0).lognormal(5, 1.5, args.events)
        t_np, _ = best_of(lambda: cal.to_mesf(x), args.repeat)
        t_da, _ = best_of(lambda: cal.to_mesf(da.from_array(x, chunks=1_000_000)).compute(), args.repeat)
        t_fc, _ = best_of(lambda: ref.fitting["std_crv"][0](x), args.repeat)
        print(f"### Converting {args.events:,} events to MEFL\n")
        print(table(["implementation", "s", "Mevents/s"], [
            ["evflow to_mesf (NumPy)", f"{t_np:.3f}", f"{args.events / t_np / 1e6:.0f}"],
            ["evflow to_mesf (dask, 1M-event chunks)", f"{t_da:.3f}", f"{args.events / t_da / 1e6:.0f}"],
            ["FlowCal std_crv", f"{t_fc:.3f}", f"{args.events / t_fc / 1e6:.0f}"],
        ]))
        print()

    try:
        import miepython as mp
    except ImportError:
        mp = None
    d = np.linspace(30, 1000, args.diameters)
    lam, nmed = 488.0, 1.333
    t_tot, c_tot = best_of(lambda: scattering_cross_section(POLYSTYRENE, d, lam, nmed), args.repeat)
    t_col, _ = best_of(lambda: collected_cross_section(POLYSTYRENE, d, lam, nmed, Detector.side_scatter()), args.repeat)
    rows = [["evflow total C_sca", f"{t_tot * 1e3:.0f}", "-"],
            ["evflow C_sca collected by a 53 deg side-scatter cone", f"{t_col * 1e3:.0f}", "-"]]
    if mp is not None:
        x = np.pi * d * nmed / lam
        t_mp, q = best_of(lambda: [mp.efficiencies_mx(1.59 / nmed, xi)[1] for xi in x], args.repeat)
        c_mp = np.array(q) * np.pi * (d / 2) ** 2
        rows.append(["miepython efficiencies_mx (total)", f"{t_mp * 1e3:.0f}", f"{np.max(np.abs(c_tot / c_mp - 1)):.1e}"])
    print(f"### Mie, polystyrene in water at 488 nm, {args.diameters} diameters 30-1000 nm\n")
    print(table(["implementation", "ms", "max rel. diff vs miepython"], rows))


if __name__ == "__main__":
    main()
