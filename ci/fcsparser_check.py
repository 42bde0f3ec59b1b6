"""Cross-check evflow's FCS reader against fcsparser on every real FCS file.

fcsparser needs NumPy < 2, so it cannot live beside evflow; this script runs
twice:

    python ci/fcsparser_check.py write DATA_DIR/written      # evflow writes test files
    python ci/fcsparser_check.py dump DATA_DIR OUT.npz      # in a venv with fcsparser
    python ci/fcsparser_check.py compare DATA_DIR OUT.npz   # in evflow's environment

``ci/fcsparser-check`` builds the venv and runs both.  The comparison is exact
(float64 values); files fcsparser cannot read are listed, and must be files
evflow reads on its own checks (FlowIO or byte-level oracle in the test suite)
or files that no reader can read.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path


def _files(data_dir: Path):
    import os

    found = []
    for root, _dirs, names in os.walk(data_dir, followlinks=True):
        found += [Path(root) / n for n in names if n.lower().endswith((".fcs", ".lmd"))]
    return sorted(found)


def write(out_dir: Path) -> None:
    """Files written by evflow.write_fcs, so fcsparser reads evflow's writer too."""
    import numpy as np

    import evflow

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    data = rng.lognormal(4, 1.5, size=(20000, 5)).astype(np.float32)
    evflow.write_fcs(
        out_dir / "evflow_written.fcs",
        data,
        ["FSC-A", "SSC-A", "FL1-A", "FL2-A", "Time"],
        markers=[None, None, "CD63", "EpCAM/FITC", None],
        meta={"$CYT": "synthetic", "NOTE": "a/b//c", "$FIL": "evflow_written.fcs"},
    )
    evflow.write_fcs(out_dir / "evflow_written_empty.fcs", np.zeros((0, 2), np.float32), ["A", "B"])
    # FCS 3.2: one type with the 3.2 channel keywords (fcsparser reads it), and mixed types ($PnDATATYPE)
    kw32 = dict(version="3.2", types=["Forward_Scatter", "Side_Scatter", "Raw_Fluorescence", "Raw_Fluorescence", "Time"],
                features=["Area", "Area", "Area", "Height", None], analytes=[None, None, "CD63", "CD9", None],
                meta={"$BEGINDATETIME": "2026-03-01T14:05:22", "$ENDDATETIME": "2026-03-01T14:07:02"})
    evflow.write_fcs(out_dir / "evflow_written_32.fcs", data, ["FSC-A", "SSC-A", "FL1-A", "FL2-H", "Time"], **kw32)
    ints = np.floor(data[:, [0, 4]]).clip(0, 65535)
    evflow.write_fcs(out_dir / "evflow_written_32_int.fcs", ints, ["FSC-A", "Time"], version="3.2", datatypes="I")
    mixed = data.astype(np.float64)
    mixed[:, 4] = np.arange(len(mixed))
    evflow.write_fcs(out_dir / "evflow_written_32_mixed.fcs", mixed, ["FSC-A", "SSC-A", "FL1-A", "FL2-H", "Time"],
                     datatypes=["F", "F", "D", "D", "I"], **kw32)


def dump(data_dir: Path, out: Path) -> None:
    import fcsparser
    import numpy as np

    arrays, errors, names = {}, {}, {}
    for p in _files(data_dir):
        key = str(p.relative_to(data_dir))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                meta, df = fcsparser.parse(str(p), reformat_meta=True, dtype="float64", channel_naming="$PnN")
            arrays[key] = np.asarray(df.values, dtype=np.float64)
            names[key] = np.array([str(c) for c in df.columns])
        except Exception as exc:  # fcsparser has no common error class
            errors[key] = f"{type(exc).__name__}: {exc}"[:200]
    np.savez(out, **{f"data::{k}": v for k, v in arrays.items()}, **{f"error::{k}": np.array(v) for k, v in errors.items()},
             **{f"names::{k}": v for k, v in names.items()})
    print(f"fcsparser {fcsparser.__version__ if hasattr(fcsparser, '__version__') else ''}: read {len(arrays)} files, "
          f"failed on {len(errors)}")


#: files where fcsparser is known to be wrong, and why evflow differs
KNOWN = {
    "fcs/flowio/data_start_offset_discrepancy_example.fcs": (
        "HEADER puts DATA at byte 5555, inside TEXT (bytes 74-6080); evflow follows $BEGINDATA=6081, "
        "as FlowIO does, while fcsparser decodes TEXT bytes as events"
    ),
    "written/evflow_written_32_mixed.fcs": (
        "FCS 3.2 $PnDATATYPE (F, D and I in one event): fcsparser reads every column as $DATATYPE; "
        "evflow's reading is checked on hand-decoded bytes in tests/test_io_fcs_layout.py"
    ),
}


def compare(data_dir: Path, out: Path) -> int:
    import numpy as np

    import evflow

    z = np.load(out)
    rows, bad = [], 0
    for key in sorted({k.split("::", 1)[1] for k in z.files}):
        path = data_dir / key
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sample = evflow.read_fcs(path)
                ours = sample.to_numpy().astype(np.float64)
            ours_err = None
        except evflow.FCSError as exc:
            ours, ours_err = None, str(exc)
        if f"data::{key}" in z.files:
            ref = z[f"data::{key}"]
            if ours is None:
                verdict = f"MISMATCH: fcsparser reads it, evflow says: {ours_err[:100]}"
                bad += 1
            elif any(key.endswith(k) for k in KNOWN):
                verdict = "differs as expected: " + next(v for k, v in KNOWN.items() if key.endswith(k))
            elif ours.shape != ref.shape or not np.array_equal(ours, ref, equal_nan=True):
                verdict = f"MISMATCH: shapes {ours.shape} vs {ref.shape}"
                if ours.shape == ref.shape:
                    verdict += f", max |diff| {np.nanmax(np.abs(ours - ref)):.3g}"
                bad += 1
            elif "written" in key and list(z[f"names::{key}"]) != sample.channels:
                verdict = f"MISMATCH: channel names {list(z[f'names::{key}'])} vs {sample.channels}"
                bad += 1
            else:
                verdict = f"equal ({ref.shape[0]} x {ref.shape[1]})"
        else:
            err = str(z[f"error::{key}"])
            verdict = f"fcsparser cannot read it ({err[:70]}); evflow: " + (
                f"reads {ours.shape[0]} x {ours.shape[1]}" if ours is not None else "FCSError"
            )
        rows.append((key, verdict))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"\n{len(rows) - bad} agree or are explained, {bad} mismatch")
    return 1 if bad else 0


if __name__ == "__main__":
    mode, data_dir = sys.argv[1], Path(sys.argv[2])
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    if mode == "write":
        write(data_dir)
    elif mode == "dump":
        dump(data_dir, out)
    else:
        sys.exit(compare(data_dir, out))
