"""exportd's benchmark: `python -m bench` builds the data, runs every tool on it and writes
docs/benchmarks.md with a chart. Not part of the test suite."""
