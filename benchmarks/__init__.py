"""Nudge's benchmark suite: `make bench` (python -m benchmarks.run). See benchmarks/README.md."""
