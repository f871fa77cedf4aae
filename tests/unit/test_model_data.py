"""Manifests, splits, the synthetic generator and the real-format loaders (on files made here)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data.loaders import load_appa_real, load_split_tensors, load_utkface, parse_utkface_name
from model.data.manifest import (
    ManifestRow,
    content_hash,
    load_manifest,
    rows_for_split,
    split_for_subject,
    write_manifest,
)
from model.data.synthetic import Bias, generate_dataset, render_face, subject_rows
from model.testing import synthetic_face_jpeg


def _jpeg(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(synthetic_face_jpeg(20, seed=seed))


def test_splits_are_deterministic_subject_exclusive_and_roughly_proportional() -> None:
    splits = [split_for_subject(f"subject-{i}") for i in range(5000)]
    assert splits == [split_for_subject(f"subject-{i}") for i in range(5000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert 0.77 < share["train"] < 0.83
    assert 0.08 < share["val"] < 0.12
    assert 0.08 < share["test"] < 0.12


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_round_trip_and_hash(tmp_path: Path, suffix: str) -> None:
    rows = [
        ManifestRow("a.jpg", 12.5, "s1", split_for_subject("s1"), {"sex": "F", "skin_tone": "dark"}),
        ManifestRow("b.jpg", 40.0, "s2", split_for_subject("s2"), {"sex": "M", "skin_tone": "light"}),
    ]
    path = write_manifest(tmp_path / f"m{suffix}", rows)
    manifest = load_manifest(path)
    assert list(manifest.rows) == rows
    assert manifest.root == tmp_path
    assert manifest.resolve(rows[0]) == tmp_path / "a.jpg"
    assert manifest.content_hash == content_hash(manifest)
    older = ManifestRow("b.jpg", 41.0, "s2", rows[1].split, rows[1].attributes)
    changed = write_manifest(tmp_path / f"n{suffix}", [rows[0], older])
    assert load_manifest(changed).content_hash != manifest.content_hash
    assert rows_for_split(manifest, rows[0].split)[0] == rows[0]


def test_manifest_rejects_bad_rows_and_split_leaks(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("path,age,subject_id\na.jpg,old,s1\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: age 'old'"):
        load_manifest(bad)
    leak = tmp_path / "leak.jsonl"
    leak.write_text(
        '{"path":"a","age":1,"subject_id":"s","split":"train"}\n{"path":"b","age":1,"subject_id":"s","split":"test"}\n'
    )
    with pytest.raises(ValueError, match="both 'train' and 'test'"):
        load_manifest(leak)
    missing_split = tmp_path / "nosplit.csv"
    missing_split.write_text("path,age,subject_id,sex\na.jpg,3,s9,F\n")
    row = load_manifest(missing_split).rows[0]
    assert row.split == split_for_subject("s9")
    assert row.attributes == {"sex": "F"}


def test_synthetic_generator_is_deterministic_and_writes_a_loadable_manifest(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", images=40, seed=7, images_per_subject=4, size=32)
    b = generate_dataset(tmp_path / "b", images=40, seed=7, images_per_subject=4, size=32, workers=2)
    ma, mb = load_manifest(a), load_manifest(b)
    assert len(ma.rows) == 40
    assert ma.content_hash == mb.content_hash
    assert all(ma.resolve(r).read_bytes() == mb.resolve(r).read_bytes() for r in ma.rows)
    subjects = {r.subject_id for r in ma.rows}
    assert len(subjects) == 10
    assert {r.attributes["skin_tone"] for r in ma.rows} <= {"light", "medium", "dark"}
    tensors = load_split_tensors(ma, list(ma.rows), 32)
    assert tensors.images.shape == (40, 3, 32, 32)
    assert tensors.ages.shape == (40,)


def test_age_cues_change_the_image_and_bias_shifts_one_group() -> None:
    def render(age: float) -> np.ndarray:
        return np.asarray(render_face(age, {"sex": "M", "skin_tone": "light"}, np.random.default_rng(0)), float)

    assert np.abs(render(8) - render(60)).mean() > 5
    bias = Bias.parse("skin_tone=dark:+5")
    assert bias == Bias("skin_tone", "dark", 5.0)
    with pytest.raises(ValueError, match="must look like"):
        Bias.parse("dark+5")
    # Same subject index and seed: the biased group renders differently, labels stay the true ages.
    plain = subject_rows(3, 0, 2, 32, None)
    shifted = subject_rows(3, 0, 2, 32, Bias("skin_tone", plain[0][0].attributes["skin_tone"], 30))
    assert [r.age for r, _ in plain] == [r.age for r, _ in shifted]
    assert plain[0][1] != shifted[0][1]


def test_utkface_names_including_malformed_ones(tmp_path: Path) -> None:
    names = [
        "25_0_2_20170116174525125.jpg.chip.jpg",
        "39_1_20170116174525125.jpg.chip.jpg",
        "61_3_20170109150557335.jpg",
        "x_1_0_2017.jpg",
        "7_1_9_2017.jpg",
    ]
    for i, name in enumerate(names):
        _jpeg(tmp_path / "part1" / name, seed=i)
    manifest = load_utkface(tmp_path)
    by_age = {r.age: r for r in manifest.rows}
    assert sorted(by_age) == [7.0, 25.0, 39.0, 61.0]  # the age-less name is skipped
    assert by_age[25.0].attributes == {"sex": "M", "race": "asian"}
    assert by_age[39.0].attributes == {"sex": "F", "race": "unknown"}  # race field missing
    assert by_age[7.0].attributes["race"] == "unknown"  # out-of-range code
    assert manifest.resolve(by_age[25.0]).is_file()
    assert parse_utkface_name("notes.txt") is None


def test_appa_real_keeps_real_and_apparent_age_apart(tmp_path: Path) -> None:
    for part, names in (("train", ["000001.jpg", "000002.jpg"]), ("valid", ["005613.jpg"]), ("test", ["007613.jpg"])):
        with (tmp_path / f"gt_avg_{part}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file_name", "num_ratings", "apparent_age_avg", "apparent_age_std", "real_age"])
            for i, name in enumerate(names):
                w.writerow([name, 38, 20.5 + i, 3.1, 23 + i])
                _jpeg(tmp_path / part / name, seed=i)
    (tmp_path / "train" / "000001.jpg_face.jpg").write_bytes((tmp_path / "train" / "000001.jpg").read_bytes())
    (tmp_path / "allcategories_train.csv").write_text(
        "file,gender,race,makeup,time,happiness\n000001.jpg,female,asian,no,d,h\n"
    )
    manifest = load_appa_real(tmp_path)
    rows = {r.path: r for r in manifest.rows}
    first = rows["train/000001.jpg_face.jpg"]
    assert first.age == 23.0
    assert first.attributes["apparent_age"] == "20.5"
    assert first.attributes["gender"] == "female"
    assert rows["valid/005613.jpg"].split == "val"
    assert rows["test/007613.jpg"].split == "test"
    assert all(manifest.resolve(r).is_file() for r in manifest.rows)


def test_synthetic_face_jpeg_is_a_decodable_jpeg() -> None:
    data = synthetic_face_jpeg(16, seed=5, sex="F")
    assert data == synthetic_face_jpeg(16, seed=5, sex="F")
    assert Image.open(io.BytesIO(data)).format == "JPEG"
