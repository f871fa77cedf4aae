"""InferenceEngine: bad frames fail alone, results keep input order, reloads are bit-identical."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from model.checkpoint import load_checkpoint, save_checkpoint
from model.decode import DecodeLimits, decode_rgb
from model.engine import (
    DecodedBatch,
    EncodedFrame,
    FrameError,
    FrameEstimate,
    InferenceEngine,
    bucket_size,
    fixed_shape,
    frame_results,
    trace_forward,
)
from model.errors import ImageDecodeError
from model.models import Prediction, count_flops, create_model, fuse_for_inference
from model.testing import synthetic_face_jpeg, train_tiny_checkpoint


def _encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("age_regressor", input_size=32, width=4, depth=1, version="t")
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "m.safetensors", model)


def _face(age: float = 20.0, seed: int = 0) -> EncodedFrame:
    return EncodedFrame(synthetic_face_jpeg(age, seed=seed), "image/jpeg")


def _bad_frames() -> dict[str, EncodedFrame]:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    jpeg = _encode(rgb, "JPEG")
    return {
        "empty": EncodedFrame(b"", "image/jpeg"),
        "truncated_jpeg": EncodedFrame(jpeg[: len(jpeg) // 2], "image/jpeg"),
        "png_bomb": EncodedFrame(_encode(Image.new("1", (20000, 20000)), "PNG"), "image/png"),
        "gif": EncodedFrame(_encode(rgb, "GIF"), "image/gif"),
        "bmp_labelled_png": EncodedFrame(_encode(rgb, "BMP"), "image/png"),
        "cmyk_jpeg": EncodedFrame(_encode(rgb.convert("CMYK"), "JPEG"), "image/jpeg"),
        "png_16bit": EncodedFrame(_encode(Image.fromarray(np.zeros((8, 8), np.uint16)), "PNG"), "image/png"),
        "random_bytes": EncodedFrame(np.random.default_rng(1).bytes(2000), "image/jpeg"),
    }


EXPECTED_REASONS = {
    "empty": "empty",
    "truncated_jpeg": "corrupt",
    "png_bomb": "decompression_bomb",
    "gif": "unsupported_format",
    "bmp_labelled_png": "unsupported_format",
    "cmyk_jpeg": "unsupported_mode",
    "png_16bit": "unsupported_mode",
    "random_bytes": "unsupported_format",
}


def test_each_bad_frame_fails_alone_and_the_rest_is_scored(checkpoint: Path) -> None:
    engine = InferenceEngine.from_checkpoint(checkpoint, device="cpu")
    bad = _bad_frames()
    frames: list[EncodedFrame] = []
    for frame in bad.values():  # interleave good and bad frames
        frames += [_face(seed=len(frames)), frame]
    results = engine.score(frames)
    assert len(results) == len(frames)
    for name, result in zip(bad, results[1::2], strict=True):
        assert isinstance(result, FrameError), name
        assert result.reason == EXPECTED_REASONS[name], (name, result)
        assert len(result.detail) < 300
    good = results[0::2]
    assert all(isinstance(r, FrameEstimate) and np.isfinite(r.mean) and r.std > 0 for r in good)
    # A good frame's score does not depend on what else shared its batch.
    alone = engine.score([frames[2]])[0]
    assert alone == results[2]


def test_supported_formats_and_modes_score(checkpoint: Path) -> None:
    engine = InferenceEngine.from_checkpoint(checkpoint, device="cpu")
    img = Image.open(io.BytesIO(synthetic_face_jpeg(30, seed=3)))
    frames = [
        EncodedFrame(_encode(img, "PNG"), "image/png"),
        EncodedFrame(_encode(img, "WEBP"), "image/webp"),
        EncodedFrame(_encode(img.convert("L"), "PNG"), "image/png"),
        EncodedFrame(_encode(img.convert("RGBA"), "PNG"), "image/png; charset=binary"),
        EncodedFrame(_encode(img.convert("P"), "PNG"), "image/png"),
    ]
    assert all(isinstance(r, FrameEstimate) for r in engine.score(frames))


def test_limits_are_enforced_before_decoding() -> None:
    data = synthetic_face_jpeg(30, seed=0)
    with pytest.raises(ImageDecodeError) as too_large:
        decode_rgb(data, "image/jpeg", 32, DecodeLimits(max_bytes=len(data) - 1))
    assert too_large.value.reason == "too_large"
    with pytest.raises(ImageDecodeError) as bomb:
        decode_rgb(data, "image/jpeg", 32, DecodeLimits(max_pixels=64 * 64 - 1))
    assert bomb.value.reason == "decompression_bomb"
    with pytest.raises(ImageDecodeError) as fmt:
        decode_rgb(data, "image/jpeg", 32, DecodeLimits(formats=frozenset({"PNG"})))
    assert fmt.value.reason == "unsupported_format"


def test_reload_gives_bit_identical_outputs_on_cpu(checkpoint: Path) -> None:
    frames = [_face(age, seed=i) for i, age in enumerate((8, 15, 17, 40))]
    first = InferenceEngine.from_checkpoint(checkpoint, device="cpu").score(frames)
    second = InferenceEngine.from_checkpoint(checkpoint, device="cpu").score(frames)
    assert first == second  # exact float equality, not approx


@pytest.mark.parametrize(
    ("name", "head"), [("age_regressor", "dldl"), ("age_regressor", "gaussian"), ("bucket_classifier", "dldl")]
)
def test_the_traced_forward_pass_gives_the_eager_model_s_exact_bits(tmp_path: Path, name: str, head: str) -> None:
    """The CPU engine runs a traced graph (it keeps the event loop's lock free); every estimate must be
    the eager model's to the last bit, at every batch size and after the graph executor's first calls."""
    torch.manual_seed(1)
    model = create_model(name, input_size=32, width=4, depth=2, head=head, version="t")
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    traced = InferenceEngine.from_checkpoint(path, device="cpu")
    eager = InferenceEngine(load_checkpoint(path).model, device="cpu", trace=False)
    assert traced.traced
    assert not eager.traced
    frames = [_face(float(age), seed=i) for i, age in enumerate(range(5, 69))]
    for _ in range(3):  # the executor profiles its first calls, then may optimise
        for n in (1, 7, 64):
            assert traced.score(frames[:n]) == eager.score(frames[:n])  # exact, not approx


def test_a_forward_pass_that_cannot_be_traced_faithfully_runs_eager(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = fuse_for_inference(create_model("age_regressor", input_size=32, width=4, depth=1)).eval()

    def fails(*_: object, **__: object) -> object:
        raise RuntimeError("untraceable")

    monkeypatch.setattr(torch.jit, "trace", fails)
    assert trace_forward(model, 32) is model
    monkeypatch.setattr(torch.jit, "trace", lambda m, *_, **__: lambda x: m(x) + 1e-3)  # any difference
    assert trace_forward(model, 32) is model
    assert [r.message for r in caplog.records] == [
        "forward pass not traced, running eager: RuntimeError: untraceable",
        "traced forward pass differs from the eager one; running eager",
    ]


def test_replay_s_fixed_shape_scorer_decodes_and_scores_in_two_steps_and_refuses_an_oversize_pass(
    checkpoint: Path,
) -> None:
    """The micro-batcher calls decode and score_decoded apart; together they are `score`, and a pass
    larger than the fixed shape is refused (its frames would otherwise be scored in another shape)."""
    from stream.runners.replay import FixedShapeScorer

    scorer = FixedShapeScorer(InferenceEngine.from_checkpoint(checkpoint, device="cpu"), 4)
    frames = [_face(float(age), seed=i) for i, age in enumerate((9, 16, 30))] + [EncodedFrame(b"", "image/jpeg")]
    assert scorer.score_decoded(scorer.decode(frames)) == scorer.score(frames)
    with pytest.raises(ValueError, match="5 frames do not fit a fixed shape of 4"):
        scorer.decode([*frames, frames[0]])


def test_frame_results_place_each_row_by_index_ignore_padding_and_never_leave_a_gap() -> None:
    """Rows go to the frames `indices` names; padded rows are dropped; a frame with neither an error
    nor a row is an error (a shorter list would shift later estimates onto other events)."""
    err = FrameError("empty", "no bytes")
    batch = DecodedBatch(pixels=torch.zeros(2, 3, 4, 4, dtype=torch.uint8), indices=(3, 0), errors={1: err}, total=4)
    padded = Prediction(mean=torch.tensor([30.0, 12.0, 99.0]), std=torch.tensor([2.0, 3.0, 9.0]), probs=None)
    assert frame_results(batch, padded) == [
        FrameEstimate(mean=12.0, std=3.0),
        err,
        FrameError("decode_failed", "no result"),
        FrameEstimate(mean=30.0, std=2.0),
    ]


def test_order_preserved_across_chunks_and_empty_input(checkpoint: Path) -> None:
    engine = InferenceEngine.from_checkpoint(checkpoint, device="cpu")
    engine.max_batch = 3  # force several overlapped decode/infer chunks
    frames = [_face(seed=i) if i % 4 else EncodedFrame(b"", "image/jpeg") for i in range(10)]
    results = engine.score(frames)
    assert [isinstance(r, FrameError) for r in results] == [i % 4 == 0 for i in range(10)]
    reference = InferenceEngine.from_checkpoint(checkpoint, device="cpu").score(frames)
    assert [r.mean for r in results if isinstance(r, FrameEstimate)] == pytest.approx(
        [r.mean for r in reference if isinstance(r, FrameEstimate)], rel=1e-5
    )
    assert engine.score([]) == []


def test_decode_and_infer_steps_compose(checkpoint: Path) -> None:
    engine = InferenceEngine.from_checkpoint(checkpoint, device="cpu")
    batch = engine.decode([_face(seed=1), EncodedFrame(b"", "image/png")])
    assert batch.pixels.shape == (1, 3, 32, 32)
    assert batch.pixels.dtype == torch.uint8
    assert batch.indices == (0,)
    assert batch.errors[1].reason == "empty"
    pred = engine.infer(batch.pixels)
    assert pred.mean.shape == (1,)
    assert engine.model_version == "age_regressor@t"


def test_bucket_model_reports_probabilities(tmp_path: Path) -> None:
    model = create_model("bucket_classifier", input_size=32, width=4, depth=1)
    engine = InferenceEngine.from_checkpoint(save_checkpoint(tmp_path / "b.safetensors", model), device="cpu")
    result = engine.score([_face()])[0]
    assert isinstance(result, FrameEstimate)
    assert result.bucket_probs is not None
    assert len(result.bucket_probs) == 5
    assert sum(result.bucket_probs) == pytest.approx(1.0, abs=1e-5)


def test_fixed_shape_is_one_shape_and_one_layout_whatever_the_fill() -> None:
    """A full decoded batch (an NHWC view) and a padded one (torch.cat: NCHW) reach the model alike."""
    nhwc = torch.arange(4 * 5 * 5 * 3, dtype=torch.int64).to(torch.uint8).reshape(4, 5, 5, 3)
    view = nhwc.permute(0, 3, 1, 2)  # what InferenceEngine.decode returns
    full, padded, one = fixed_shape(view, 4), fixed_shape(view[:3], 4), fixed_shape(view[:1].contiguous(), 4)
    assert full.shape == padded.shape == one.shape == (4, 3, 5, 5)
    assert full.stride() == padded.stride() == one.stride() == (75, 1, 15, 3)
    assert torch.equal(padded[:3], view[:3])
    assert int(padded[3].abs().sum()) == 0
    with pytest.raises(ValueError, match="do not fit"):
        fixed_shape(view, 3)


def test_batch_buckets_round_up() -> None:
    assert [bucket_size(n) for n in (1, 3, 5, 64, 65)] == [1, 4, 8, 64, 128]


def test_trained_tiny_model_separates_children_from_adults(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = train_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
    assert train_tiny_checkpoint(path.parent.parent) == path  # cached, no retraining
    engine = InferenceEngine.from_checkpoint(path, device="cpu")
    kids = engine.score([_face(age, seed=100 + i) for i, age in enumerate((8, 9, 10, 11, 12) * 2)])
    adults = engine.score([_face(age, seed=200 + i) for i, age in enumerate((30, 35, 40, 45, 50) * 2)])
    kid_means = [r.mean for r in kids if isinstance(r, FrameEstimate)]
    adult_means = [r.mean for r in adults if isinstance(r, FrameEstimate)]
    assert np.median(kid_means) < 15 < 25 < np.median(adult_means)
    assert sum(m < 18 for m in kid_means) >= 9
    assert sum(m >= 18 for m in adult_means) >= 9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_cpu_closely(checkpoint: Path) -> None:
    frames = [_face(seed=i) for i in range(5)]
    cpu = InferenceEngine.from_checkpoint(checkpoint, device="cpu").score(frames)
    gpu = InferenceEngine.from_checkpoint(checkpoint, device="cuda").score(frames)
    for a, b in zip(cpu, gpu, strict=True):
        assert isinstance(a, FrameEstimate)
        assert isinstance(b, FrameEstimate)
        assert abs(a.mean - b.mean) < 0.5  # bf16/fp16 autocast


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=3000), cut=st.integers(min_value=0, max_value=4000), flip=st.integers(0, 255))
def test_decoder_never_raises_anything_but_decode_error(data: bytes, cut: int, flip: int) -> None:
    """Arbitrary bytes, and truncated or bit-flipped real JPEGs, either decode or fail with a reason code."""
    real = bytearray(_JPEG_SAMPLE[:cut] if cut else _JPEG_SAMPLE)
    if real:
        real[flip % len(real)] ^= 0xFF
    for blob in (data, bytes(real)):
        try:
            arr = decode_rgb(blob, "image/jpeg", 16, DecodeLimits())
        except ImageDecodeError as exc:
            assert exc.reason in EXPECTED_REASONS.values() or exc.reason == "too_large"
        else:
            assert arr.shape == (16, 16, 3)


_JPEG_SAMPLE = synthetic_face_jpeg(30, seed=9, size=32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flops_are_counted_alike_for_a_model_on_the_gpu() -> None:
    """bench/inference.py counts the engine's model where it runs (it once failed on CUDA)."""
    cpu = create_model("age_regressor", input_size=64)
    gpu = create_model("age_regressor", input_size=64).to("cuda")
    assert count_flops(gpu, gpu.config.input_size) == count_flops(cpu, cpu.config.input_size) > 0
