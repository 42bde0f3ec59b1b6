"""evflow.flow."""
