"""Benchmarks (run as scripts); a package so tests can share bench/history.py."""
