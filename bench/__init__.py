"""Benchmarks: each prints a table; results go to docs/benchmarks.md with the command."""
