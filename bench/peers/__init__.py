"""Peers the benchmark measures Sluice against (bench-only dependencies)."""
