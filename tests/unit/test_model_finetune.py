"""`agegate train --init-from`: fine-tuning starts from the parent's weights, keeps its architecture,
records its lineage (parent, datasets, seeds), and refuses a checkpoint it cannot continue."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from model import train as train_mod
from model.checkpoint import load_checkpoint, read_meta
from model.data.manifest import load_manifest
from model.data.synthetic import generate_dataset
from model.evaluation.leakage import fingerprints, lineage_of, overlap


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = generate_dataset(tmp_path_factory.mktemp("base"), images=240, seed=1, size=32)
    feedback = generate_dataset(tmp_path_factory.mktemp("feedback"), images=160, seed=2, size=32)
    return base, feedback


@pytest.fixture(scope="module")
def parent(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("parent")
    args = _parse(
        [
            "--data",
            str(data[0]),
            "--out",
            str(out),
            "--input-size",
            "32",
            "--width",
            "4",
            "--depth",
            "1",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--warmup-steps",
            "2",
            "--version",
            "parent-1",
            "--threads",
            "1",
            "--workers",
            "1",
        ]
    )
    assert train_mod.run(args) == 0
    return out / "best.safetensors"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    return parser.parse_args(argv)


def _finetune(feedback: Path, out: Path, parent: Path, *extra: str) -> argparse.Namespace:
    # No architecture options: they come from the parent (the defaults would be width 16, size 64).
    return _parse(
        [
            "--data",
            str(feedback),
            "--out",
            str(out),
            "--init-from",
            str(parent),
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--warmup-steps",
            "2",
            "--version",
            "child-1",
            "--seed",
            "7",
            "--threads",
            "1",
            "--workers",
            "1",
            *extra,
        ]
    )


def test_finetune_starts_from_the_parent_and_records_its_lineage(
    data: tuple[Path, Path], parent: Path, tmp_path: Path
) -> None:
    base, feedback = data
    # lr 0: the optimizer moves nothing, so the child's parameters are exactly the parent's.
    assert train_mod.run(_finetune(feedback, tmp_path, parent, "--lr", "0", "--mix", str(base))) == 0
    child = load_checkpoint(tmp_path / "best.safetensors")
    dad = load_checkpoint(parent)
    assert child.config.input_size == 32
    assert child.config.width == 4
    assert child.config.version == "child-1"
    child_params = dict(child.model.named_parameters())
    for name, value in dad.model.named_parameters():
        assert torch.equal(value, child_params[name]), name

    lineage = read_meta(tmp_path / "best.safetensors").extra["lineage"]
    assert lineage["parent"]["model_version"] == "parent-1"
    assert lineage["parent"]["weights_sha256"] == dad.meta.weights_sha256
    assert lineage["parent"]["dataset_hash"] == dad.meta.dataset_hash
    hashes = {d["role"]: d["content_hash"] for d in lineage["datasets"]}
    assert hashes == {"train": load_manifest(feedback).content_hash, "mix": load_manifest(base).content_hash}
    assert lineage["seeds"] == {"train": 7}
    # The child has seen what its parent saw: the leakage guard refuses the base's training rows too.
    base_manifest = load_manifest(base)
    found = overlap(
        lineage_of(tmp_path / "best.safetensors"), fingerprints(base_manifest, base_manifest.split("train"))
    )
    assert found["leaks"]
    assert found["shared_subjects"] > 0


def test_finetune_without_mix_still_inherits_the_parent_lineage(
    data: tuple[Path, Path], parent: Path, tmp_path: Path
) -> None:
    base, feedback = data
    assert train_mod.run(_finetune(feedback, tmp_path, parent)) == 0
    lineage = lineage_of(tmp_path / "best.safetensors")
    assert lineage is not None
    assert [d["role"] for d in lineage["datasets"]] == ["train"]
    base_manifest = load_manifest(base)
    assert overlap(lineage, fingerprints(base_manifest, base_manifest.split("val")))["shared_subjects"] > 0


@pytest.mark.parametrize(
    ("option", "value", "clash"),
    [
        ("--width", "8", "--width 8 (checkpoint: 4)"),
        ("--model", "bucket_classifier", "--model bucket_classifier (checkpoint: age_regressor)"),
    ],
)
def test_finetune_refuses_an_incompatible_architecture(
    data: tuple[Path, Path],
    parent: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    clash: str,
) -> None:
    assert train_mod.run(_finetune(data[1], tmp_path, parent, option, value)) == 2
    err = capsys.readouterr().err
    assert "incompatible architecture" in err
    assert clash in err
    assert not (tmp_path / "best.safetensors").exists()


def test_finetune_refuses_a_file_that_is_not_a_checkpoint(
    data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a checkpoint")
    assert train_mod.run(_finetune(data[1], tmp_path / "out", bogus)) == 2
    assert "--init-from" in capsys.readouterr().err
