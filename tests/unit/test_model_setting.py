"""AGEGATE_MODEL takes what its help says: a training run's directory or a .safetensors file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.checkpoint import save_checkpoint
from model.models import create_model
from stream.config import load_settings
from stream.pipeline.assemble import checkpoint_file, load_engine


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("age_regressor", input_size=32, width=4, depth=1, version="dir-test")
    save_checkpoint(tmp_path / "run" / "best.safetensors", model)
    return tmp_path / "run"


def test_a_directory_means_its_best_checkpoint(run_dir: Path) -> None:
    assert checkpoint_file(str(run_dir)) == run_dir / "best.safetensors"
    engine = load_engine(load_settings(environ={}, model_checkpoint=str(run_dir), inference_device="cpu"))
    try:
        assert engine.model_version.endswith("dir-test")
    finally:
        engine.close()


def test_a_file_is_used_as_is(run_dir: Path) -> None:
    assert checkpoint_file(str(run_dir / "best.safetensors")) == run_dir / "best.safetensors"


def test_a_directory_without_a_checkpoint_is_a_clear_missing_file(tmp_path: Path) -> None:
    # FileNotFoundError: the worker waits for it (a training run still writing), like a missing file.
    with pytest.raises(FileNotFoundError, match=r"without best\.safetensors"):
        checkpoint_file(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no model checkpoint at"):
        checkpoint_file(str(tmp_path / "absent.safetensors"))
