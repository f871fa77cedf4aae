"""The model package's errors: one base class, so the streaming side wraps them at its edge.

`model` stays importable with torch, numpy, Pillow and safetensors only (the GPU machine has no
more), so it cannot share stream.errors; stream code catches `ModelError` where it calls the model
(loading a checkpoint, decoding a frame) and turns it into its own typed errors or frame results.
"""

from __future__ import annotations

from pathlib import Path


class ModelError(Exception):
    """Base of every error the model package raises on purpose."""


class CheckpointError(ModelError):
    """A checkpoint that cannot be used; the message names the file and what is wrong with it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"checkpoint {str(path)!r}: {problem}")
        self.path = Path(path)
        self.problem = problem


class ImageDecodeError(ModelError):
    """One frame could not be decoded; `reason` is a stable code, `detail` never holds image bytes."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
