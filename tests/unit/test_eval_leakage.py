"""Leakage guard: the checkpoint records its training lineage; eval refuses an overlapping benchmark
unless forced, and then the report says so."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from model import train as train_mod
from model.data.synthetic import generate_dataset
from model.evaluation.datasets import build_benchmark
from model.evaluation.leakage import generator_seeds, lineage_of, overlap
from model.evaluation.report import load_metrics_json
from stream.cli import main
from stream.tools import evaluate


def test_overlap_counts_what_is_shared() -> None:
    lineage = {"images": ["a", "b", "c"], "subjects": ["x", "y"], "generator": {"seeds": [0]}, "manifest_hash": "h"}
    clean = overlap(lineage, {"images": ["d"], "subjects": ["z"], "generator": {"seeds": [1000]}})
    assert clean["checked"] is True
    assert clean["leaks"] is False
    dirty = overlap(lineage, {"images": ["c", "d"], "subjects": ["z"], "generator": {"seeds": [0]}})
    assert (dirty["shared_images"], dirty["shared_subjects"], dirty["shared_generator_seeds"]) == (1, 0, [0])
    assert dirty["leaks"] is True
    assert overlap(None, {"images": [], "subjects": [], "generator": {"seeds": []}})["checked"] is False
    assert generator_seeds(["s0-000001", "s1000-000002", "person-7"]) == [0, 1000]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("leak")
    manifest = generate_dataset(root / "train", images=240, seed=3, size=32)
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            str(manifest),
            "--out",
            str(root / "run"),
            "--input-size",
            "32",
            "--width",
            "4",
            "--depth",
            "1",
            "--batch-size",
            "32",
            "--warmup-steps",
            "2",
            "--epochs",
            "1",
            "--version",
            "t",
            "--workers",
            "1",
        ]
    )
    assert train_mod.run(args) == 0
    return manifest, root / "run" / "best.safetensors"


def test_checkpoint_records_its_training_lineage(trained: tuple[Path, Path]) -> None:
    from model.data.manifest import load_manifest

    manifest, ckpt = trained
    lineage = lineage_of(ckpt)
    assert lineage is not None
    m = load_manifest(manifest)
    seen = len(m.split("train")) + len(m.split("val"))
    assert lineage["rows"] == seen
    assert len(lineage["images"]) == seen
    assert lineage["generator"]["seeds"] == [3]
    assert lineage["manifest_hash"] == m.content_hash


def test_eval_refuses_overlap_unless_forced(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, ckpt = trained
    # the same generator seed: the training subjects again (rendered at another size, so other bytes)
    build_benchmark(tmp_path / "same", images=120, seed=3)
    same = str(tmp_path / "same" / "manifest.csv")
    base = ["eval", "--model", str(ckpt), "--data", same, "--bootstrap", "20", "--min-cell-size", "5"]
    assert main([*base, "--out", str(tmp_path / "a")]) == evaluate.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "shared with the training data" in err
    assert "--force-overlap" in err
    assert not (tmp_path / "a" / "metrics.json").exists()
    assert main([*base, "--out", str(tmp_path / "b"), "--force-overlap"]) == 0
    leak = load_metrics_json(tmp_path / "b" / "metrics.json")["models"][0]["leakage"]
    assert leak["forced"] is True
    assert leak["shared_images"] == 0
    assert leak["shared_subjects"] > 0
    assert leak["shared_generator_seeds"] == [3]
    assert "in-sample" in (tmp_path / "b" / "report.html").read_text()
    # the training manifest's own validation images: the very same files
    val = ["eval", "--model", str(ckpt), "--data", str(manifest), "--split", "val", "--bootstrap", "20"]
    assert main([*val, "--out", str(tmp_path / "v")]) == evaluate.EXIT_BAD_INPUT
    assert main([*val, "--out", str(tmp_path / "v"), "--force-overlap"]) == 0
    assert load_metrics_json(tmp_path / "v" / "metrics.json")["models"][0]["leakage"]["shared_images"] > 0


def test_eval_accepts_a_disjoint_benchmark(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = trained
    build_benchmark(tmp_path / "other", images=120, seed=1000)
    assert (
        main(
            [
                "eval",
                "--model",
                str(ckpt),
                "--data",
                str(tmp_path / "other" / "manifest.csv"),
                "--out",
                str(tmp_path / "c"),
                "--bootstrap",
                "20",
                "--min-cell-size",
                "5",
            ]
        )
        == 0
    )
    leak = load_metrics_json(tmp_path / "c" / "metrics.json")["models"][0]["leakage"]
    assert leak["checked"] is True
    assert leak["leaks"] is False
    assert "in-sample" not in (tmp_path / "c" / "report.html").read_text()
