"""Spillover compensation: from ``$SPILLOVER``/``$SPILL`` or a Gating-ML ``spectrumMatrix``.

A spillover (spectrum) matrix ``S`` has one row per fluorochrome and one column
per detector: ``S[i, j]`` is the fraction of fluorochrome ``i``'s signal seen
by detector ``j``.  Detector values ``x`` (events x detectors) are unmixed as
``x @ inv(S)`` (square ``S``), or by least squares ``x @ pinv(S)`` when there
are more detectors than fluorochromes, as Gating-ML 2.0 prescribes.
"""

from __future__ import annotations

import numpy as np

from ..backend import array_module
from ..errors import GatingError

__all__ = ["Compensation", "parse_spillover_string"]


def parse_spillover_string(value: str, key: str = "$SPILLOVER"):
    """Parse ``"n,ch1,...,chn,s11,s12,...,snn"`` → ``(matrix (n, n) float64, [ch1..chn])``.

    The FCS reader's parser (:func:`evflow.io.fcs.parse_spillover`), with its
    errors raised as :class:`GatingError` for gating code.

    Raises
    ------
    GatingError
        If the count, the names or the numbers do not add up.
    """
    from ..errors import FCSError
    from ..io.fcs import parse_spillover

    try:
        da = parse_spillover(value, None, key)
    except FCSError as exc:
        raise GatingError(str(exc)) from None
    return np.array(da.values), [str(c) for c in da.coords["source"].values]


class Compensation:
    """A spillover matrix and the detectors (channels) it applies to.

    Parameters
    ----------
    matrix : array_like (n_fluorochromes, n_detectors)
        Spillover coefficients (dimensionless); rows are fluorochromes.
    channels_in : sequence of str
        Detector channel names (``$PnN``), one per column.
    id : str, optional
        Gating-ML ``spectrumMatrix`` id (or "FCS" for the file's own matrix).
    fluorochromes : sequence of str, optional
        Names of the compensated outputs, one per row; default: the detector
        names (as for ``$SPILLOVER``, where output i replaces channel i).
    """

    def __init__(self, matrix, channels_in, id=None, fluorochromes=None):
        self.id = None if id is None else str(id)
        try:
            m = np.array(matrix, dtype=np.float64)
        except (TypeError, ValueError):
            raise GatingError(f"compensation {self.id!r}: matrix is not numeric") from None
        if m.ndim != 2:
            raise GatingError(f"compensation {self.id!r}: matrix has {m.ndim} dimensions, expected 2")
        channels_in = [str(c) for c in channels_in]
        if m.shape[1] != len(channels_in):
            raise GatingError(
                f"compensation {self.id!r}: matrix has {m.shape[1]} columns but {len(channels_in)} detectors"
            )
        if fluorochromes is None:
            if m.shape[0] != m.shape[1]:
                raise GatingError(
                    f"compensation {self.id!r}: a {m.shape[0]}x{m.shape[1]} matrix needs fluorochrome names"
                )
            fluorochromes = channels_in
        fluorochromes = [str(c) for c in fluorochromes]
        if m.shape[0] != len(fluorochromes):
            raise GatingError(
                f"compensation {self.id!r}: matrix has {m.shape[0]} rows but {len(fluorochromes)} fluorochromes"
            )
        if m.shape[0] > m.shape[1]:
            raise GatingError(
                f"compensation {self.id!r}: {m.shape[0]} fluorochromes cannot be unmixed from "
                f"{m.shape[1]} detectors"
            )
        if not np.all(np.isfinite(m)):
            raise GatingError(f"compensation {self.id!r}: matrix has non-finite entries")
        for label, names in (("detector", channels_in), ("fluorochrome", fluorochromes)):
            dup = sorted({c for c in names if names.count(c) > 1})
            if dup:
                raise GatingError(f"compensation {self.id!r}: {label} names repeated: {dup}")
        if m.shape[0] == m.shape[1]:
            if np.linalg.matrix_rank(m) < m.shape[0]:
                raise GatingError(f"compensation {self.id!r}: spillover matrix is singular")
            unmix = np.linalg.inv(m)
        else:
            unmix = np.linalg.pinv(m)
        m.setflags(write=False)
        unmix.setflags(write=False)
        self.matrix = m
        self.channels_in = channels_in
        self.fluorochromes = fluorochromes
        self.unmixing = unmix  # (n_detectors, n_fluorochromes)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_spillover(cls, spill, id="FCS"):
        """From a ``$SPILLOVER`` string or the ``xarray.DataArray`` of ``FCSSample.spillover``."""
        if isinstance(spill, str):
            m, names = parse_spillover_string(spill)
            return cls(m, names, id=id)
        if hasattr(spill, "dims") and hasattr(spill, "coords"):
            dims = list(spill.dims)
            rows, cols = dims[0], dims[1]
            return cls(
                np.asarray(spill.values),
                [str(c) for c in spill.coords[cols].values],
                id=id,
                fluorochromes=[str(c) for c in spill.coords[rows].values],
            )
        if isinstance(spill, Compensation):
            return spill
        raise GatingError(f"compensation {id!r}: cannot build a compensation from {type(spill).__name__}")

    @classmethod
    def from_sample(cls, sample, id="FCS"):
        """The file's own matrix (``$SPILLOVER``/``$SPILL``) of an ``FCSSample``, or None."""
        spill = sample.spillover
        return None if spill is None else cls.from_spillover(spill, id=id)

    # ----------------------------------------------------------------- use
    def output_index(self, name: str):
        """Column of the compensated output called ``name`` (a fluorochrome or, for square
        matrices, the detector at the same position), or None."""
        if name in self.fluorochromes:
            return self.fluorochromes.index(name)
        if name in self.channels_in and len(self.fluorochromes) == len(self.channels_in):
            return self.channels_in.index(name)
        return None

    def detector_columns(self, channels) -> list[int]:
        """Indices of this matrix's detectors in ``channels``; GatingError if one is missing."""
        channels = list(channels)
        missing = [c for c in self.channels_in if c not in channels]
        if missing:
            raise GatingError(
                f"compensation {self.id!r}: detector channel(s) {missing} not in the sample; channels are {channels}"
            )
        return [channels.index(c) for c in self.channels_in]

    def unmix(self, detector_values):
        """Compensated values (n, n_fluorochromes) from detector values (n, n_detectors)."""
        xp = array_module(detector_values)
        x = xp.asarray(detector_values, dtype=xp.float64)
        return x @ xp.asarray(self.unmixing)

    def apply(self, events, channels):
        """Compensate ``events`` (n, n_channels; NumPy or CuPy) whose columns are ``channels``.

        Returns a float64 copy in which the detector columns hold the
        compensated values (output ``i`` in the column of detector ``i``);
        other columns are unchanged.
        """
        xp = array_module(events)
        cols = self.detector_columns(channels)
        out = xp.array(events, dtype=xp.float64, copy=True)
        comp = self.unmix(out[:, cols])
        out[:, cols[: comp.shape[1]]] = comp
        return out

    def __eq__(self, other):
        return (
            isinstance(other, Compensation)
            and self.channels_in == other.channels_in
            and self.fluorochromes == other.fluorochromes
            and np.array_equal(self.matrix, other.matrix)
        )

    __hash__ = None

    def __repr__(self):
        return (
            f"Compensation(id={self.id!r}, detectors={self.channels_in}, "
            f"fluorochromes={self.fluorochromes})"
        )
