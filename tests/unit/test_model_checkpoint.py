"""Checkpoints: round trip, and a clear error for each way a file can be wrong."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.checkpoint import load_checkpoint, read_meta, save_checkpoint
from model.errors import CheckpointError
from model.models import AgeModel, create_model


def _model(width: int = 4) -> AgeModel:
    torch.manual_seed(0)
    return create_model("age_regressor", input_size=32, width=width, depth=1, version="t1")


def test_round_trip_restores_weights_config_and_metadata(tmp_path: Path) -> None:
    model = _model()
    path = save_checkpoint(tmp_path / "a.safetensors", model, dataset_hash="sha256:x", metrics={"mae": 2.5})
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    assert loaded.meta.dataset_hash == "sha256:x"
    assert loaded.meta.metrics == {"mae": 2.5}
    assert loaded.meta.code_version
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert not (tmp_path / "a.safetensors.tmp").exists()


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "a.safetensors", _model())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"a\.safetensors.*truncated"):
        load_checkpoint(path)


def test_missing_file_and_pickle_are_rejected_without_unpickling(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="file not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"weights": 1}))
    with pytest.raises(CheckpointError, match=r"evil\.safetensors"):
        load_checkpoint(evil)


def test_wrong_architecture_names_the_mismatched_tensors(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "a.safetensors", _model(width=4))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    raw = json.loads(meta["agegate"])
    raw["config"]["width"] = 8  # metadata now describes a wider network than the tensors hold
    raw["weights_sha256"] = ""
    meta["agegate"] = json.dumps(raw)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=r"architecture mismatch.*wrong shapes"):
        load_checkpoint(path)


def test_tampered_weights_fail_the_recorded_hash(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "a.safetensors", _model())
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["model.head.bias"] = tensors["model.head.bias"] + 1
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="metadata mismatch: weights"):
        load_checkpoint(path)


def test_expectations_and_foreign_safetensors(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "a.safetensors", _model())
    with pytest.raises(CheckpointError, match=r"config.input_size is 32, expected 64"):
        load_checkpoint(path, expect={"input_size": 64})
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an agegate checkpoint"):
        read_meta(foreign)
