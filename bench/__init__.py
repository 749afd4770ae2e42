"""Benchmarks of the broker on the real stack: `python -m bench all [--quick]` prints figures."""
