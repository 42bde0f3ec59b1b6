"""Results of applying a gating strategy: lazy memberships, counts and a statistics table."""

from __future__ import annotations

import numpy as np

from ...backend import array_module, to_numpy
from ...errors import GatingError

__all__ = ["GatingResults"]


class GatingResults:
    """Result of :meth:`GatingStrategy.apply`: lazy memberships and a statistics table."""

    def __init__(self, strategy, masks, gate_ids, n_events, sample_name=None):
        self.strategy = strategy
        self.masks = masks  # dask array (n_events, n_gates) of bool, NumPy or CuPy chunks
        self.gate_ids = list(gate_ids)
        self.n_events = n_events
        self.sample_name = sample_name
        self._counts = None

    def membership(self, gate_id: str):
        """Bool dask array (n_events,) of events in ``gate_id`` (parents included), NumPy chunks.

        ``numpy.asarray(result.membership(gid))`` computes it.
        """
        if gate_id not in self.gate_ids:
            raise GatingError(f"gate {gate_id!r} was not applied; gates are {self.gate_ids}")
        col = self.masks[:, self.gate_ids.index(gate_id)]
        if array_module(col).__name__ != "numpy":
            col = col.map_blocks(to_numpy, dtype=bool, meta=np.empty((0,), dtype=bool))
        return col

    def counts(self) -> dict:
        """``{gate_id: number of events}``, computed once (one pass for all gates)."""
        if self._counts is None:
            total = to_numpy(self.masks.sum(axis=0, dtype=np.int64))
            self._counts = {g: int(c) for g, c in zip(self.gate_ids, total)}
        return dict(self._counts)

    @property
    def stats(self):
        """pandas DataFrame indexed by gate id: parent, count, percent_parent, percent_total."""
        import pandas as pd

        counts = self.counts()
        rows = []
        for g in self.gate_ids:
            parent = self.strategy.gates[g].parent
            if parent is None:
                pc = self.n_events
            elif parent in counts:
                pc = counts[parent]
            else:
                pc = None
            c = counts[g]
            rows.append(
                {
                    "gate_id": g,
                    "parent": parent,
                    "count": c,
                    "percent_parent": (100.0 * c / pc) if pc else (float("nan")),
                    "percent_total": 100.0 * c / self.n_events,
                }
            )
        df = pd.DataFrame(rows).set_index("gate_id")
        df.attrs["n_events"] = self.n_events
        df.attrs["sample"] = self.sample_name
        return df

    def __repr__(self):
        return f"GatingResults({self.sample_name!r}, n_events={self.n_events}, gates={self.gate_ids})"
