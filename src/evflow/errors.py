"""Exceptions raised by evflow.

Every error a user can cause (a corrupt file, a wrong keyword, a missing
channel) is an :class:`EvflowError` subclass whose message names the file,
keyword, gate or key, what was found and what was expected.
"""

from __future__ import annotations

__all__ = [
    "EvflowError",
    "FCSError",
    "FCSHeaderError",
    "FCSTextError",
    "FCSDataError",
    "FCSUnsupportedError",
    "GatingError",
    "CalibrationError",
    "ImageError",
    "ConfigError",
    "BackendError",
    "OutputError",
    "ImplementationError",
    "EvflowWarning",
    "FCSWarning",
]


class EvflowError(Exception):
    """Base class of every error evflow raises on bad input or configuration."""


class FCSError(EvflowError, ValueError):
    """An FCS file could not be read or written as asked."""

    def __init__(self, message: str, path=None):
        self.path = None if path is None else str(path)
        if path is not None and str(path) not in message:
            message = f"{path}: {message}"
        super().__init__(message)


class FCSHeaderError(FCSError):
    """The HEADER segment (first 58 bytes) is missing or malformed."""


class FCSTextError(FCSError):
    """The TEXT segment is malformed, or a required keyword is missing or invalid."""


class FCSDataError(FCSError):
    """The DATA segment does not agree with the keywords that describe it."""


class FCSUnsupportedError(FCSError):
    """The file uses a feature of the standard that evflow does not read."""


class GatingError(EvflowError, ValueError):
    """A gate, gating strategy or Gating-ML document is invalid for the data."""


class CalibrationError(EvflowError, ValueError):
    """A calibration (beads, scatter model, concentration) cannot be fitted or applied."""


class ImageError(EvflowError, ValueError):
    """An image or image stack cannot be read or processed."""


class ConfigError(EvflowError, ValueError):
    """An experiment file or option is invalid."""


class OutputError(EvflowError, RuntimeError):
    """The output folder cannot be used: not evflow's, in use by another run, or not writable."""


class BackendError(EvflowError, RuntimeError):
    """The requested array backend (e.g. CuPy on a CUDA device) is not available."""


class ImplementationError(BackendError, ValueError):
    """``impl=`` names no implementation of a kernel (the message lists the choices)."""


class EvflowWarning(UserWarning):
    """Something in the input was unusual but could be read; the message says what was assumed."""


class FCSWarning(EvflowWarning):
    """An FCS file departs from the standard in a way evflow could work around."""
