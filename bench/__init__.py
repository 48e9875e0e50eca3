"""Benchmarks of the KAIROS kernels (``python -m bench.kernels``)."""
