"""Checkpoints: safetensors weights with the JSON metadata needed to rebuild and trust them.

One file per checkpoint: the metadata (config, dataset hash, metrics, code version, a hash of the
weights) rides in the safetensors header, so weights and their description cannot drift apart.
Loading never unpickles: safetensors only maps raw tensor bytes, and the metadata is plain JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.config import ModelConfig
from model.errors import CheckpointError
from model.models import AgeModel, create_model

FORMAT = "agegate-checkpoint/1"
_META_KEY = "agegate"


@dataclass(frozen=True, slots=True)
class CheckpointMeta:
    config: ModelConfig
    dataset_hash: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    code_version: str = ""
    kind: str = "weights"  # "weights" or "recovery" (weights + optimizer state)
    extra: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    weights_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "config": self.config.to_dict(),
                "dataset_hash": self.dataset_hash,
                "metrics": self.metrics,
                "code_version": self.code_version,
                "kind": self.kind,
                "extra": self.extra,
                "created_at": self.created_at,
                "weights_sha256": self.weights_sha256,
            },
            sort_keys=True,
        )


@dataclass(frozen=True, slots=True)
class LoadedCheckpoint:
    model: AgeModel
    meta: CheckpointMeta
    # Extra tensors saved beside the weights (optimizer state in recovery checkpoints).
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        return self.meta.config


def code_version() -> str:
    """The installed agegate version; training adds the git commit when it can find one."""
    try:
        from importlib.metadata import version

        return version("agegate")
    except Exception:  # not installed (running from a checkout)
        return "0.0.0+source"


def weights_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: AgeModel,
    *,
    dataset_hash: str = "",
    metrics: Mapping[str, float] | None = None,
    code_version_: str | None = None,
    extra: Mapping[str, Any] | None = None,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
    kind: str = "weights",
) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = CheckpointMeta(
        config=model.config,
        dataset_hash=dataset_hash,
        metrics={k: float(v) for k, v in (metrics or {}).items()},
        code_version=code_version_ or code_version(),
        kind=kind,
        extra=dict(extra or {}),
        created_at=time.time(),
        weights_sha256=weights_hash(weights),
    )
    tensors = {f"model.{k}": v for k, v in weights.items()}
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v.detach().to("cpu").contiguous().clone()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, _META_KEY: meta.to_json()})
    os.replace(tmp, path)
    return path


def read_meta(path: str | Path) -> CheckpointMeta:
    """Only the metadata (cheap: reads the header), e.g. to list checkpoints or check compatibility."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file (truncated or corrupt?): {exc}") from None
    if header.get("format") != FORMAT or _META_KEY not in header:
        raise CheckpointError(
            path, f"not an agegate checkpoint: header format is {header.get('format')!r}, expected {FORMAT!r}"
        )
    try:
        raw = json.loads(header[_META_KEY])
        config = ModelConfig.from_dict(raw["config"])
        return CheckpointMeta(
            config=config,
            dataset_hash=str(raw.get("dataset_hash", "")),
            metrics={k: float(v) for k, v in raw.get("metrics", {}).items()},
            code_version=str(raw.get("code_version", "")),
            kind=str(raw.get("kind", "weights")),
            extra=dict(raw.get("extra", {})),
            created_at=float(raw.get("created_at", 0.0)),
            weights_sha256=str(raw.get("weights_sha256", "")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(path, f"metadata is invalid: {exc}") from None


def update_extra(path: str | Path, updates: Mapping[str, Any]) -> Path:
    """Rewrite a checkpoint with `updates` merged into its metadata's `extra`, atomically.

    Tensors and every other metadata field are kept exactly as they were (the raw JSON is edited, so
    fields this code does not know survive), and the weights hash stays valid: only the header changes.
    Used to attach what is learned after training (the uncertainty calibration) to the promoted model.
    """
    path = Path(path)
    read_meta(path)  # a clear CheckpointError for anything that is not a valid checkpoint
    try:
        with safe_open(str(path), framework="pt") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"tensor data unreadable (truncated or corrupt?): {exc}") from None
    raw = json.loads(header[_META_KEY])
    raw["extra"] = {**raw.get("extra", {}), **updates}
    header[_META_KEY] = json.dumps(raw, sort_keys=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    os.replace(tmp, path)
    return path


def load_checkpoint(
    path: str | Path, *, expect: Mapping[str, Any] | None = None, map_location: str = "cpu"
) -> LoadedCheckpoint:
    """Rebuild the model from the file alone, verifying architecture and the weights hash.

    `expect` holds config fields the caller relies on (e.g. {"name": "age_regressor",
    "input_size": 64}); a difference is an error rather than a silently different model.
    """
    path = Path(path)
    meta = read_meta(path)
    for key, want in (expect or {}).items():
        have = getattr(meta.config, key, None)
        if have != want:
            raise CheckpointError(path, f"metadata mismatch: config.{key} is {have!r}, expected {want!r}")
    try:
        with safe_open(str(path), framework="pt", device=map_location) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"tensor data unreadable (truncated or corrupt?): {exc}") from None
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    extra = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    if meta.weights_sha256 and weights_hash(weights) != meta.weights_sha256:
        raise CheckpointError(path, "metadata mismatch: weights do not match the hash recorded in the metadata")
    model = create_model(meta.config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(weights))
        if weights[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            path,
            f"architecture mismatch for {meta.config.name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong_shape[:5]}",
        )
    model.load_state_dict(weights, strict=True)
    model.eval()
    return LoadedCheckpoint(model=model, meta=meta, extra_tensors=extra)
