"""Benchmarks of fxstream against its ceilings and peers."""
