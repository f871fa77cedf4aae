"""Loaded by Python at start-up when bench/noop is on PYTHONPATH (bench/worker.py puts it there for
its `-noop` variants): the forward pass becomes a no-op, a stand-in for a GPU on which inference is
nearly free, so what remains is the worker's own per-event cost. Benchmarks only; never deployed."""

from __future__ import annotations

import os

# Popped once read: the worker's own children (its decode processes, AGEGATE_DECODE_PROCESSES) only
# decode, and must not each import torch to patch an engine they never run.
if os.environ.pop("AGEGATE_BENCH_NOOP_INFER", None) == "1":
    from bench.noop_infer import patch_engine

    patch_engine()
