"""Marker: the overlay is "installed" in the fake package (verify.py preflight)."""
