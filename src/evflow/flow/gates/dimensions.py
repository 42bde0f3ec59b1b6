"""Gate dimensions: a channel, optionally compensated and transformed (:class:`Dimension`), or a ratio of
two channels (:class:`RatioDimension`), and how a dimension names its compensation matrix."""

from __future__ import annotations

from ...errors import GatingError
from ..compensation import Compensation
from ..transforms import RatioTransform, Transform

__all__ = ["Dimension", "RatioDimension"]


_UNCOMP = (None, "", "uncompensated")


def _comp_ref(compensation):
    if compensation in _UNCOMP:
        return None
    if isinstance(compensation, Compensation):
        return compensation
    return str(compensation)


def _comp_name(ref):
    if ref is None:
        return None
    return ref.id if isinstance(ref, Compensation) else ref


class Dimension:
    """One gate dimension: a channel, optionally compensated, optionally transformed.

    Parameters
    ----------
    channel : str
        ``$PnN`` of the channel, or the fluorochrome name of a spectrum matrix.
    transform : Transform, optional
        Applied after compensation; gate coordinates are on its display scale.
    compensation : str or Compensation, optional
        None or "uncompensated"; "FCS" (the file's ``$SPILLOVER``; no matrix
        in the file means uncompensated); or the id of a compensation of the
        strategy (a Gating-ML ``spectrumMatrix``).
    """

    def __init__(self, channel: str, transform: Transform | None = None, compensation=None):
        if not isinstance(channel, str) or not channel:
            raise GatingError(f"dimension channel must be a non-empty string, got {channel!r}")
        if transform is not None and not isinstance(transform, Transform):
            raise GatingError(f"dimension {channel!r}: transform must be a Transform, got {type(transform).__name__}")
        if isinstance(transform, RatioTransform):
            raise GatingError(f"dimension {channel!r}: a ratio is a RatioDimension, not a transform")
        self.channel = channel
        self.transform = transform
        self.compensation = _comp_ref(compensation)

    @property
    def compensation_id(self):
        """The compensation reference as a string (None when uncompensated)."""
        return _comp_name(self.compensation)

    @property
    def channels(self) -> tuple:
        return (self.channel,)

    def key(self):
        return ("dim", self.channel, self.compensation_id, self.transform)

    def __eq__(self, other):
        return isinstance(other, Dimension) and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())

    def __repr__(self):
        extra = ""
        if self.compensation is not None:
            extra += f", compensation={self.compensation_id!r}"
        if self.transform is not None:
            extra += f", transform={self.transform!r}"
        return f"Dimension({self.channel!r}{extra})"


class RatioDimension:
    """A new dimension ``A (x1 - B) / (x2 - C)`` of two channels (Gating-ML ``fratio``).

    Parameters
    ----------
    id : str
        The ratio's transformation id.
    channels : (str, str)
        Numerator and denominator channels.
    a, b, c : float
        Scale and offsets of the ratio.
    transform : Transform, optional
        Applied to the ratio.
    compensation : str, optional
        Compensation of the two channels before the ratio (as in :class:`Dimension`).
    """

    def __init__(self, id, channels, a=1.0, b=0.0, c=0.0, transform=None, compensation=None):
        if isinstance(channels, RatioTransform):
            self.ratio = channels
        else:
            self.ratio = RatioTransform(channels, a, b, c, id=id)
        if transform is not None and not isinstance(transform, Transform):
            raise GatingError(f"ratio dimension {id!r}: transform must be a Transform")
        self.transform = transform
        self.compensation = _comp_ref(compensation)

    id = property(lambda self: self.ratio.id)
    channels = property(lambda self: self.ratio.channels)
    compensation_id = property(lambda self: _comp_name(self.compensation))

    @property
    def channel(self) -> str:
        return f"{self.ratio.id}"

    def key(self):
        return ("ratio", self.ratio, self.compensation_id, self.transform)

    def __eq__(self, other):
        return isinstance(other, RatioDimension) and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())

    def __repr__(self):
        return f"RatioDimension({self.id!r}, {list(self.channels)}, A={self.ratio.params[0]:g}, B={self.ratio.params[1]:g}, C={self.ratio.params[2]:g}, compensation={self.compensation_id!r}, transform={self.transform!r})"


def _as_dim(d, gid):
    if isinstance(d, (Dimension, RatioDimension)):
        return d
    if isinstance(d, str):
        return Dimension(d)
    raise GatingError(f"gate {gid!r}: dimension {d!r} is not a Dimension, RatioDimension or channel name")
