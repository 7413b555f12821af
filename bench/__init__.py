"""Benchmarks of the MovieGen stack: `python -m bench.<name>`, or `python -m bench.run_all`."""
