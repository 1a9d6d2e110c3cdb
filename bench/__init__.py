"""Baton's benchmark harness: Baton against the raw engines, side by side."""
