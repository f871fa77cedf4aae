"""A no-op forward pass for benchmarks: `InferenceEngine.infer` returns a constant estimate per row.

JPEG decoding still runs (it is part of `score`); only the model's forward pass is skipped. Used
in-process for the `engine-noop` row and, through bench/noop/sitecustomize.py, in the worker
subprocess for the `worker-noop` row.
"""

from __future__ import annotations

import torch

from model.engine import InferenceEngine
from model.models import Prediction


def _noop_infer(self: InferenceEngine, pixels: torch.Tensor) -> Prediction:
    n = pixels.shape[0]
    return Prediction(torch.full((n,), 30.0), torch.full((n,), 3.0), None)


def patch_engine() -> None:
    InferenceEngine.infer = _noop_infer  # type: ignore[method-assign]
