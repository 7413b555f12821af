"""Model-facing generation code: tiny offline models and per-task generation functions."""
