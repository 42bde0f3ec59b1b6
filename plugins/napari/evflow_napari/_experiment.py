"""The experiment side of flow gating, free of Qt: markers and thresholds of an FCS file's experiment."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["experiment_gating", "save_thresholds"]


def experiment_gating(path, experiment=None) -> dict | None:
    """The experiment's gating settings for an FCS file of it (found next to the file or above it).

    Returns None without an experiment file, else a dict: ``experiment`` (file), ``sample`` (the
    sample whose ``flow`` is this file, or None), ``markers`` (name -> channel, bit order),
    ``thresholds`` (name -> channel units, linear scale: the run's ``threshold`` from
    ``results.zarr`` when the experiment has been run, else the ``fixed`` values; None otherwise)
    and ``source`` (where the thresholds come from).  ``experiment``: the experiment file the sample
    was opened from (else it is looked for beside the file).
    """
    from ._reader import experiment_results, find_experiment, open_results

    exp_file = Path(experiment) if experiment else find_experiment(path)
    if exp_file is None or exp_file.suffix.lower() != ".toml":
        return None
    try:
        from evflow.pipeline.config import load_experiment

        exp = load_experiment(exp_file, check_files=False)
    except Exception:  # noqa: BLE001 - a broken experiment file: the sample is gated on its own
        return None
    here = Path(path).resolve()
    sample = next((s.name for s in exp.samples if s.flow is not None and Path(exp.resolve(s.flow)).resolve() == here),
                  None)
    markers = {name: ch for ch, name in (exp.markers or {}).items()}
    out = {"experiment": str(exp_file), "sample": sample, "markers": markers, "thresholds": None, "source": ""}
    thr_s = exp.settings.get("thresholds", {})
    res = experiment_results(exp, exp_file)
    if res is not None and markers:
        ds = open_results(res)
        if "threshold" in ds and "marker" in ds.dims:
            t = ds["threshold"].transpose("sample", "marker").values
            rows = [i for i in range(t.shape[0]) if np.isfinite(t[i]).all()]
            if rows:
                i = list(ds["sample"].values).index(sample) if sample in ds["sample"].values else rows[0]
                names = [str(m) for m in ds["marker"].values]
                if set(names) >= set(markers):
                    out["thresholds"] = {m: float(t[i, names.index(m)]) for m in markers}
                    out["source"] = f"{res}: {ds.attrs.get('threshold_rule', 'thresholds of the run')}"
    if out["thresholds"] is None and thr_s.get("rule") == "fixed" and markers:
        vals = thr_s.get("values", {})
        if all(m in vals for m in markers):
            out["thresholds"] = {m: float(vals[m]) for m in markers}
            out["source"] = f"{exp_file}: [thresholds] fixed"
    return out


def save_thresholds(experiment_file, thresholds: dict) -> Path:
    """Write marker thresholds (name -> channel units) into the experiment's ``[thresholds]`` as the
    ``fixed`` rule; the rest of the file is kept as it is."""
    from evflow.pipeline.store import atomic_write_bytes

    from ._detection import update_toml_section

    p = Path(experiment_file)
    text = p.read_text() if p.is_file() else ""
    text = update_toml_section(text, "thresholds", {"rule": "fixed", "values": {str(k): float(v) for k, v in
                                                                              thresholds.items()}})
    atomic_write_bytes(p, text.encode())
    return p

