"""InferenceEngine: the one way the stream, the replay tool and evaluation score frames.

Two steps, usable separately (the benchmark times them apart): `decode` turns encoded frames into
a uint8 batch plus per-frame errors; `infer` runs the model on a batch. `score` chains them with a
bad frame failing alone, and on larger inputs overlaps decoding the next chunk with inferring the
current one (Pillow and torch both release the GIL).

On the CPU the forward pass runs as a traced TorchScript graph (`trace_forward`), not module by
module from Python. Eager, each of a pass's few dozen operators hands the interpreter lock back and
must win it again, and inside the worker the event loop holds it much of the time. Measured with
`python bench/gil_convoy.py` (64-frame passes of the default model, one torch thread, 2-core CI
machine): 61 passes/s alone either way; beside a thread running Python, 7.1 eager and 37.4 traced.
The graph is used only if it gives the eager model's exact bits on a probe batch;
`torch.jit.trace` is deprecated upstream but kept through torch 2.x, and a model it cannot trace
falls back to eager with a warning.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from model.checkpoint import CheckpointMeta, load_checkpoint
from model.config import ModelConfig
from model.decode import DecodeLimits, decode_rgb
from model.decode_pool import DecodePool
from model.errors import ImageDecodeError
from model.models import AgeModel, Prediction, fuse_for_inference
from model.uncertainty import UncertaintyCalibration

log = logging.getLogger(__name__)

# CUDA batches are padded up to one of these sizes so kernels and cudnn plans are reused.
BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    data: bytes
    content_type: str  # e.g. "image/jpeg", "image/png", "image/webp"

    def __repr__(self) -> str:  # never print image bytes
        return f"EncodedFrame(<{len(self.data)} bytes>, {self.content_type!r})"


@dataclass(frozen=True, slots=True)
class FrameEstimate:
    mean: float  # age in years
    std: float  # standard deviation in years (>0)
    bucket_probs: tuple[float, ...] | None = None  # only for BucketClassifier models


@dataclass(frozen=True, slots=True)
class FrameError:
    reason: str  # stable code: empty, too_large, decompression_bomb, corrupt, unsupported_format, ...
    detail: str  # human text, never the image bytes


FrameResult = FrameEstimate | FrameError


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """Frames that decoded, stacked, plus the errors of those that did not, by input position."""

    pixels: torch.Tensor  # (n_ok, 3, S, S) uint8, channels_last memory layout
    indices: tuple[int, ...]  # input position of each row of `pixels`
    errors: dict[int, FrameError]
    total: int


def trace_forward(model: AgeModel, size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """`model`'s forward as a TorchScript graph that runs without the interpreter lock, or the model
    itself when tracing fails or the graph's output differs in any bit from the model's on a probe.

    The probe is a seeded random uint8 batch in the channels_last layout `decode` produces; the trace
    records operators only, so the batch size stays free (the tests compare sizes 1 to 64)."""
    probe = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    probe = probe.contiguous(memory_format=torch.channels_last)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the deprecation notice and tracer warnings: checked below
            traced = torch.jit.trace(model, probe, check_trace=False)
            # The graph executor profiles the first calls and optimises after: compare after those too.
            same = all(torch.equal(traced(probe), model(probe)) for _ in range(4))
    except Exception as exc:  # a model tracing cannot follow: eager is always correct
        log.warning("forward pass not traced, running eager: %s: %s", type(exc).__name__, str(exc)[:200])
        return model
    if not same:
        log.warning("traced forward pass differs from the eager one; running eager")
        return model
    return cast(Callable[[torch.Tensor], torch.Tensor], traced)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    return resolved


def bucket_size(n: int) -> int:
    return next((b for b in BATCH_BUCKETS if b >= n), n)


def fixed_shape(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """`pixels` zero-padded to exactly `size` rows, always in channels_last memory.

    For scoring that must give the same bits whatever the batch fill (replay): the CPU picks its
    convolution kernels by shape and memory layout, and both vary otherwise. A full decoded batch is
    a channels_last view while `torch.cat` (padding) returns plain NCHW, so a frame scored in a full
    batch and the same frame in a padded one could take different kernels and differ in their last
    bits. One shape and one layout for every forward pass removes both.
    """
    n = pixels.shape[0]
    if n > size:
        raise ValueError(f"{n} rows do not fit a fixed shape of {size}")
    if n < size:
        pixels = torch.cat([pixels, pixels.new_zeros((size - n, *pixels.shape[1:]))])
    return pixels.contiguous(memory_format=torch.channels_last)


def frame_results(batch: DecodedBatch, pred: Prediction) -> list[FrameResult]:
    """One result per frame of `batch`, in input order: its decode error, or its estimate from the
    prediction row that `batch.indices` gives it (rows past those, a fixed shape's padding, unused).

    A frame that has neither is a FrameError, not a gap: a shorter list would hand the next frame's
    estimate to the wrong event.
    """
    out: list[FrameResult | None] = [None] * batch.total
    for i, err in batch.errors.items():
        out[i] = err
    means, stds = pred.mean.tolist(), pred.std.tolist()
    probs = pred.probs.tolist() if pred.probs is not None else None
    for row, i in enumerate(batch.indices):
        out[i] = FrameEstimate(
            mean=float(means[row]), std=float(stds[row]), bucket_probs=tuple(probs[row]) if probs else None
        )
    return [r if r is not None else FrameError("decode_failed", "no result") for r in out]


class InferenceEngine:
    def __init__(
        self,
        model: AgeModel,
        *,
        meta: CheckpointMeta | None = None,
        device: str = "auto",
        threads: int = 0,
        limits: DecodeLimits | None = None,
        max_batch: int = 64,
        amp_dtype: torch.dtype | None = None,
        decode_processes: int = 0,
        trace: bool = True,
    ) -> None:
        """Takes ownership of `model`: it is fused (BN folded into convs) and moved in place.
        `decode_processes` > 0 decodes in that many processes (model/decode_pool.py), 0 in this one.
        `trace=False` keeps the CPU forward pass eager (see the module docstring)."""
        if threads > 0:
            # Process-wide in torch; the worker owns the process, so this is its inference budget.
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.config: ModelConfig = model.config
        self.meta = meta
        # Calibration fitted at training time: every mean this engine returns goes through its mean map
        # and every std is scaled by it, so all consumers (worker, replay, shadow, eval) see calibrated
        # estimates. Without meta: scale 1, default floor; without a mean map (the default): identity mean.
        self.uncertainty = (
            UncertaintyCalibration.from_meta(meta)
            if meta is not None
            else UncertaintyCalibration(floor_source="default: engine built without checkpoint metadata")
        )
        self.limits = limits or DecodeLimits()
        self.max_batch = max_batch
        self.model = fuse_for_inference(model).to(self.device).eval()
        self._cuda = self.device.type == "cuda"
        if self._cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
            if amp_dtype is None:
                amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.amp_dtype = amp_dtype
        self._forward: Callable[[torch.Tensor], torch.Tensor] = (
            self.model if self._cuda or not trace else trace_forward(self.model, self.config.input_size)
        )
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="agegate-decode")
        # Public so that its processes can be seen (pids, restarts); None when decoding in this one.
        self.decode_pool = (
            DecodePool(decode_processes, self.config.input_size, self.limits) if decode_processes else None
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        threads: int = 0,
        limits: DecodeLimits | None = None,
        decode_processes: int = 0,
    ) -> InferenceEngine:
        loaded = load_checkpoint(path)
        return cls(
            loaded.model,
            meta=loaded.meta,
            device=device,
            threads=threads,
            limits=limits,
            decode_processes=decode_processes,
        )

    @property
    def traced(self) -> bool:
        """Whether the forward pass runs as a traced graph (see `trace_forward`); eager on CUDA."""
        return self._forward is not self.model

    @property
    def model_version(self) -> str:
        return self.config.model_version

    @property
    def error_floor_years(self) -> float:
        """The model's persistent per-person error (sd, years) that fusing more frames cannot remove."""
        return self.uncertainty.floor_years

    @property
    def floor_ratio(self) -> float:
        """The persistent share of a frame's calibrated variance (0: `error_floor_years` for every frame)."""
        return self.uncertainty.floor_ratio

    def close(self) -> None:
        self._decoder.shutdown(wait=False)
        if self.decode_pool is not None:
            self.decode_pool.close()

    # -- steps -------------------------------------------------------------------------------------

    def decode(self, frames: Sequence[EncodedFrame]) -> DecodedBatch:
        if self.decode_pool is not None:
            pooled = self.decode_pool.decode([(f.data, f.content_type) for f in frames])
            # NHWC -> NCHW view: the memory stays NHWC, i.e. channels_last, with no copy.
            pixels = torch.from_numpy(pooled.pixels).permute(0, 3, 1, 2)
            pool_errors = {i: FrameError(*e) for i, e in pooled.errors.items()}
            return DecodedBatch(pixels, pooled.indices, pool_errors, len(frames))
        size = self.config.input_size
        arrays: list[np.ndarray] = []
        indices: list[int] = []
        errors: dict[int, FrameError] = {}
        for i, frame in enumerate(frames):
            try:
                arrays.append(decode_rgb(frame.data, frame.content_type, size, self.limits))
                indices.append(i)
            except ImageDecodeError as exc:
                errors[i] = FrameError(exc.reason, exc.detail)
            except Exception as exc:  # a decoder bug must still fail only its own frame
                log.exception("unexpected decode failure")
                errors[i] = FrameError("decode_failed", f"{type(exc).__name__}: {str(exc)[:200]}")
        return self._stacked(arrays, indices, errors, len(frames))

    def _stacked(
        self, arrays: list[np.ndarray], indices: list[int], errors: dict[int, FrameError], total: int
    ) -> DecodedBatch:
        size = self.config.input_size
        if arrays:
            # NHWC -> NCHW view: the memory stays NHWC, i.e. channels_last, with no copy.
            pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        else:
            pixels = torch.zeros(0, 3, size, size, dtype=torch.uint8)
        return DecodedBatch(pixels, tuple(indices), errors, total)

    def infer(self, pixels: torch.Tensor) -> Prediction:
        """Forward a (N, 3, S, S) uint8 batch; returns CPU tensors, mean through the mean map (identity
        without one) and std scaled (see `uncertainty`): done here so every consumer sees the same."""
        n = pixels.shape[0]
        if n == 0:
            empty = torch.zeros(0)
            return Prediction(empty, empty, None)
        with torch.inference_mode():
            if self._cuda:
                padded = bucket_size(n)
                if padded != n:
                    pad = pixels.new_zeros((padded - n, *pixels.shape[1:]))
                    pixels = torch.cat([pixels, pad])
                host = pixels.contiguous(memory_format=torch.channels_last).pin_memory()
                x = host.to(self.device, non_blocking=True)
                with torch.autocast("cuda", dtype=self.amp_dtype or torch.float16):
                    out = self.model(x)
                pred = self.model.predict(out.float()[:n])
                return Prediction(
                    self.uncertainty.apply_mean(pred.mean.cpu()),
                    self.uncertainty.apply(pred.std.cpu()),
                    pred.probs.cpu() if pred.probs is not None else None,
                )
            out = self._forward(pixels)
            pred = self.model.predict(out)
            return Prediction(self.uncertainty.apply_mean(pred.mean), self.uncertainty.apply(pred.std), pred.probs)

    # -- both --------------------------------------------------------------------------------------

    def score_decoded(self, batch: DecodedBatch) -> list[FrameResult]:
        """One result per frame of a decoded batch, in input order: the second half of `score`, for a
        caller that decodes the next batch (in another thread) while this one is inferred."""
        return frame_results(batch, self.infer(batch.pixels))

    def score(self, frames: Sequence[EncodedFrame]) -> list[FrameResult]:
        """One result per frame, in input order; a bad frame is a FrameError, never an exception."""
        chunks = [frames[i : i + self.max_batch] for i in range(0, len(frames), self.max_batch)]
        if len(chunks) == 1:  # nothing to overlap with: skip the thread hand-off
            return self.score_decoded(self.decode(chunks[0]))
        results: list[FrameResult] = []
        pending: Future[DecodedBatch] | None = self._decoder.submit(self.decode, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            assert pending is not None
            batch = pending.result()
            pending = self._decoder.submit(self.decode, chunks[k + 1]) if k + 1 < len(chunks) else None
            results.extend(frame_results(batch, self.infer(batch.pixels)))
        return results
