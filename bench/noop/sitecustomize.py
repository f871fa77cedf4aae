"""Loaded by Python at start-up when bench/noop is on PYTHONPATH (bench/worker.py puts it there for
its `-noop` variants): the forward pass becomes a no-op, a stand-in for a GPU on which inference is
nearly free, so what remains is the worker's own per-event cost. Benchmarks only; never deployed."""

from __future__ import annotations

import os

if os.environ.get("AGEGATE_BENCH_NOOP_INFER") == "1":
    from bench.noop_infer import patch_engine

    patch_engine()
