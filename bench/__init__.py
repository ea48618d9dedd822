"""Benchmarks (not tests): every figure is measured in the run that reports it."""
