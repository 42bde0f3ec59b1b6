"""Synthetic 8-peak rainbow-bead FCS files shaped like an Apogee A60-Micro or a Cytek Aurora acquisition."""

from __future__ import annotations

import numpy as np

import evflow
from evflow.flow.calibration import channel_roles

# true MESF of the 8 populations (blank first) and the values a vendor sheet lists for the first 6
TRUE_MESF = np.array([0.0, 700.0, 2200.0, 6800.0, 21000.0, 65000.0, 200000.0, 600000.0])
PUBLISHED_6 = TRUE_MESF[:6].tolist()
M, B, AUTO = 1.0, 1.2, 300.0  # channel = ((mesf + auto) / exp(b)) ** (1/m)
TOP = 65535.0

APOGEE = ["Time", "405SALS", "405LALS", "638LS", "WIDTH", "405-Blu", "405-Grn", "488-Grn", "488-Yel",
          "488-Red", "638-Red", "638-NIR"]
AURORA = ["Time", "FSC-A", "FSC-H", "SSC-A", "SSC-H", "SSC-B-A", "SSC-B-H", "FSC-W", "V1-A", "B2-A", "YG1-A",
          "R1-A", "R3-A"]


def truth_channel(mesf):
    return ((np.asarray(mesf, float) + AUTO) / np.exp(B)) ** (1.0 / M)


def rainbow_events(names, n=25_000, *, cv=0.06, seed=0, brightness=None):
    """Events (n, len(names)) of 8 populations: scatter channels hold singlets and 12 % doublets
    (twice the fluorescence, larger scatter and width); fluorescence channels hold the 8 peaks
    at channel-specific brightness, clipped at ``TOP``."""
    rng = np.random.default_rng(seed)
    roles = channel_roles(names)
    k = TRUE_MESF.size
    pop = rng.integers(0, k, n)
    doublet = rng.random(n) < 0.12
    tot = (TRUE_MESF[pop] + AUTO) * np.where(doublet, 2.0, 1.0)
    cols = []
    fl_i = 0
    for name in names:
        role = roles[name]
        if role == "time":
            cols.append(np.sort(rng.uniform(0, 120, n)))
        elif role == "scatter":
            base = 3000.0 * (1 + 0.3 * (len(cols) % 3))
            cols.append(np.where(doublet, 1.8 * base, base) * rng.lognormal(0, 0.05, n))
        elif role == "width":
            cols.append(np.where(doublet, 160.0, 100.0) * rng.lognormal(0, 0.04, n))
        else:
            scale = 1.0 if brightness is None else brightness.get(name, 1.0)
            if brightness is None:
                scale = [0.05, 0.2, 0.5, 0.3, 0.1, 1.0, 0.4, 0.8, 0.15, 0.6][fl_i % 10]
            fl_i += 1
            x = scale * ((tot / np.exp(B)) ** (1.0 / M)) * rng.lognormal(0, cv, n) + rng.normal(0, 3.0, n)
            cols.append(x)
    data = np.clip(np.stack(cols, 1), 0, TOP)
    return data


def write_rainbow(path, names=APOGEE, **kw):
    data = rainbow_events(names, **kw).astype(np.float32)
    evflow.write_fcs(path, data, names, ranges=[TOP + 1] * len(names))
    return path
