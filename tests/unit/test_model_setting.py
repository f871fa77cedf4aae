"""AGEGATE_MODEL takes what its help says: a training run's directory or a .safetensors file."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from tenacity import wait_none

from model.checkpoint import save_checkpoint
from model.engine import EncodedFrame, FrameEstimate
from model.errors import CheckpointError
from model.models import create_model
from model.testing import synthetic_face_jpeg
from stream.config import load_settings
from stream.errors import ModelUnavailable
from stream.pipeline.assemble import checkpoint_file, load_engine, load_engine_when_ready


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


def test_the_worker_s_engine_decodes_in_a_process_a_codec_crash_cannot_take_down(run_dir: Path) -> None:
    """The default (AGEGATE_DECODE_PROCESSES=1): a frame that crashes the image codec ends a decoder
    process, which is replaced, never the worker; in the thread it would end the worker."""
    engine = load_engine(load_settings(environ={}, model_checkpoint=str(run_dir), inference_device="cpu"))
    try:
        pool = engine.decode_pool
        assert pool is not None
        (pid,) = pool.pids
        # As a segfault in the codec would end it. Delivered before the decoder can run again, so it
        # never answers the request below, whenever it is actually gone.
        os.kill(pid, signal.SIGKILL)
        (result,) = engine.score([EncodedFrame(synthetic_face_jpeg(30, seed=1), "image/jpeg")])
        replaced = pool.pids
    finally:
        engine.close()
    assert isinstance(result, FrameEstimate)
    assert pool.restarts == 1
    assert len(replaced) == 1
    assert replaced != [pid]


def test_a_file_is_used_as_is(run_dir: Path) -> None:
    assert checkpoint_file(str(run_dir / "best.safetensors")) == run_dir / "best.safetensors"


def test_a_directory_without_a_checkpoint_is_a_clear_missing_file(tmp_path: Path) -> None:
    # FileNotFoundError: the worker waits for it (a training run still writing), like a missing file.
    with pytest.raises(FileNotFoundError, match=r"without best\.safetensors"):
        checkpoint_file(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no model checkpoint at"):
        checkpoint_file(str(tmp_path / "absent.safetensors"))


def test_a_missing_or_unusable_checkpoint_is_model_unavailable(tmp_path: Path) -> None:
    """Model errors are wrapped at the edge: callers see one stream error, with the cause kept."""
    settings = load_settings(environ={}, inference_device="cpu")
    with pytest.raises(ModelUnavailable, match="no model checkpoint at"):
        load_engine(settings, str(tmp_path / "absent.safetensors"))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ModelUnavailable) as caught:
        load_engine(settings, str(truncated))
    assert isinstance(caught.value.__cause__, CheckpointError)


async def test_the_worker_waits_for_a_checkpoint_that_is_missing_then_half_written(
    tmp_path: Path, run_dir: Path
) -> None:
    """A model volume that fills after start: missing, then a partial copy, then the real file. The
    loader waits through both (the worker stays not ready) instead of crashing on the partial one."""
    volume = tmp_path / "volume"
    volume.mkdir()
    target = volume / "best.safetensors"
    seen: list[str] = []

    def the_volume_fills(error: ModelUnavailable, attempt: int) -> None:
        seen.append(type(error.__cause__).__name__)
        if attempt == 1:
            target.write_bytes((run_dir / "best.safetensors").read_bytes()[:100])  # copy still running
        else:
            shutil.copyfile(run_dir / "best.safetensors", target)

    settings = load_settings(environ={}, model_checkpoint=str(volume), inference_device="cpu")
    engine = await load_engine_when_ready(settings, wait=wait_none(), on_wait=the_volume_fills)
    try:
        assert engine.model_version.endswith("dir-test")
    finally:
        engine.close()
    assert seen == ["FileNotFoundError", "CheckpointError"]
