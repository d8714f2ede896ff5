"""Renderers: one module per format, each turning results into a string (never printing)."""
