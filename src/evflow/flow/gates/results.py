"""Results of applying a gating strategy: lazy memberships, counts and a statistics table."""

from __future__ import annotations

import numpy as np

from ...backend import array_module, to_numpy
from ...errors import GatingError

__all__ = ["GatingResults"]


class GatingResults:
    """Result of :meth:`GatingStrategy.apply`: lazy memberships and a statistics table."""

    def __init__(self, strategy, masks, gate_ids, n_events, sample_name=None, sample=None):
        self.strategy = strategy
        self.sample = sample  # the FCSSample the strategy was applied to (for to_fcs)
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

    def to_fcs(self, path, *, mesf=None, size=None, markers=None, version: str = "3.1", meta=None):
        """Write the sample's events with one 0/1 channel per gate (and calibrated channels) as FCS.

        See :func:`evflow.flow.export.export_fcs` for ``mesf`` (MESF/MEFL
        calibrations), ``size`` (a scatter calibration: ``diameter_nm``),
        ``markers`` (``{marker: (channel, threshold)}``: the ``phenotype``
        bitmask) and the keywords written.  Returns the path.
        """
        from ..export import export_fcs

        if self.sample is None:
            raise GatingError("these gating results carry no sample to export; use evflow.flow.export.export_fcs")
        return export_fcs(self.sample, path, gating=self, mesf=mesf, size=size, markers=markers, version=version,
                          meta=meta)

    def __repr__(self):
        return f"GatingResults({self.sample_name!r}, n_events={self.n_events}, gates={self.gate_ids})"
