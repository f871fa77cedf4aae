"""The settings a replay's output depends on, pinned in its state file.

Why: a resumed replay appends to the lines of the run it resumes. If anything that changes output
differed between the two (another checkpoint file with the same version string, an edited policy,
another padded batch shape...), the file would silently mix two replays and no longer equal an
uninterrupted run. So the first run records every such setting and a resume that differs in any of
them is refused, naming each difference.

Deliberately not pinned, because scoring and ordering do not depend on them (stream/runners/replay.py,
"Determinism"): the checkpoint interval, `--rate`, in-flight and prefetch limits, the batch wait time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from stream.config import Settings


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_settings(
    settings: Settings,
    *,
    model_file: Path | None,
    policy_file: Path,
    model_version: str,
    policy_version: str,
    device: str,
    out: str,
) -> dict[str, Any]:
    """Every setting that can change a replay's output bytes for the same window."""
    return {
        "model_version": model_version,
        "model_sha256": file_sha256(model_file) if model_file is not None else "",
        "policy_version": policy_version,
        "policy_sha256": file_sha256(policy_file),
        "batch_frames": settings.batch_max_frames,  # the one padded shape of every forward pass
        "device": device,
        "threads": torch.get_num_threads(),  # CPU kernels may split reductions by thread count
        "torch": torch.__version__,
        "belief_half_life_days": settings.belief_half_life_days,
        "belief_ttl_days": settings.belief_ttl_days,
        "frame_max_bytes": settings.frame_max_bytes,
        "frame_max_pixels": settings.frame_max_pixels,
        "frame_uri_roots": settings.frame_uri_roots,
        "max_frames_per_event": settings.max_frames_per_event,
        "out": out,
    }


def differences(pinned: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """One "name: pinned -> now" per setting that differs, in name order."""
    return [
        f"{k}: {pinned.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(pinned) | set(now))
        if pinned.get(k) != now.get(k)
    ]
