"""evflow.imaging."""
