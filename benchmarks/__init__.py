"""Benchmarks: each ``bench_*.py`` is runnable as ``python -m benchmarks.bench_<name>`` and prints
figures with a machine line. Results are recorded in ``benchmarks/README.md``."""
