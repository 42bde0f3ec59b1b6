"""Batch pipeline: experiment files, resumable runs on any dask scheduler, outputs and the HTML report."""

from .config import Experiment, Sample, load_experiment, validate_experiment
from .run import run

__all__ = ["run", "load_experiment", "validate_experiment", "Experiment", "Sample"]
