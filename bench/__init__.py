"""Benchmarks: medians and ratios, printed; never asserted in tests."""
