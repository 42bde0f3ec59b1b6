"""evflow.io."""
