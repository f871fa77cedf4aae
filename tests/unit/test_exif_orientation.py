"""EXIF orientation is applied before scoring: a sideways child must not read as an adult.

The stored pixels are produced from the EXIF definitions (model.testing.stored_as), not by Pillow,
so these tests would catch a decoder that ignores the tag or applies the wrong transform.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.decode import DecodeLimits, decode_rgb
from model.engine import EncodedFrame, FrameEstimate, InferenceEngine
from model.errors import ImageDecodeError
from model.testing import encode_with_orientation, stored_as, synthetic_face

ORIENTATIONS = range(1, 9)
SIZE = 32


def _asymmetric(height: int = 48, width: int = 64) -> np.ndarray:
    """A smooth image (JPEG-friendly) with no symmetry: every flip or rotation changes it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 255 * x / (width - 1)
    green = 255 * y / (height - 1)
    blue = 255 * ((x / width) ** 2 + (y / height)) / 2
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def _decode(data: bytes, content_type: str, limits: DecodeLimits | None = None) -> np.ndarray:
    return decode_rgb(data, content_type, SIZE, limits or DecodeLimits()).astype(np.int16)


def test_stored_pixels_differ_for_every_orientation() -> None:
    """Guards the test data itself: each orientation stores a distinct image."""
    upright = _asymmetric(48, 48)
    stored = [stored_as(upright, k).tobytes() for k in ORIENTATIONS]
    assert len(set(stored)) == 8


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_png_with_orientation_decodes_to_the_upright_pixels_exactly(orientation: int) -> None:
    upright = _asymmetric()
    want = _decode(encode_with_orientation(upright, 1, "PNG"), "image/png")
    got = _decode(encode_with_orientation(upright, orientation, "PNG"), "image/png")
    assert np.array_equal(got, want)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_jpeg_with_orientation_decodes_to_the_upright_pixels(orientation: int) -> None:
    upright = _asymmetric()
    want = _decode(encode_with_orientation(upright, 1, quality=95), "image/jpeg")
    got = _decode(encode_with_orientation(upright, orientation, quality=95), "image/jpeg")
    # JPEG blocks fall differently on turned pixels: small differences, nothing like a turned image.
    assert np.abs(got - want).mean() < 2.0
    assert np.abs(got - want).max() < 24
    if orientation != 1:
        ignored = _decode(_jpeg_without_exif(stored_as(upright, orientation)), "image/jpeg")
        assert np.abs(ignored - want).mean() > 20  # what ignoring the tag would give: far off


def _jpeg_without_exif(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [6, 8])
def test_webp_with_orientation_is_turned_upright(orientation: int) -> None:
    upright = _asymmetric()
    want = _decode(encode_with_orientation(upright, 1, "WEBP", lossless=True), "image/webp")
    got = _decode(encode_with_orientation(upright, orientation, "WEBP", lossless=True), "image/webp")
    assert np.array_equal(got, want)


@pytest.mark.parametrize("value", [0, 9, 255])
def test_undefined_orientation_is_refused_with_a_reason(value: int) -> None:
    data = encode_with_orientation(_asymmetric(), 1)
    image = Image.open(io.BytesIO(data))
    exif = image.getexif()
    exif[0x0112] = value
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    with pytest.raises(ImageDecodeError) as info:
        _decode(buf.getvalue(), "image/jpeg")
    assert info.value.reason == "bad_orientation"


def test_turned_bomb_is_still_refused_before_decoding() -> None:
    data = encode_with_orientation(np.zeros((40, 30, 3), np.uint8), 6, "PNG")
    with pytest.raises(ImageDecodeError) as info:
        _decode(data, "image/png", DecodeLimits(max_pixels=40 * 30 - 1))
    assert info.value.reason == "decompression_bomb"


def test_a_face_stored_sideways_is_estimated_like_the_upright_face(tiny_model: Path) -> None:
    engine = InferenceEngine.from_checkpoint(tiny_model, device="cpu", threads=1)
    try:
        faces = {age: [synthetic_face(age, seed=seed) for seed in range(4)] for age in (9.0, 40.0)}
        for age, uprights in faces.items():
            for upright in uprights:
                frames = [
                    EncodedFrame(encode_with_orientation(upright, k, quality=95), "image/jpeg") for k in ORIENTATIONS
                ]
                results = engine.score(frames)
                assert all(isinstance(r, FrameEstimate) for r in results)
                means = [r.mean for r in results if isinstance(r, FrameEstimate)]
                stds = [r.std for r in results if isinstance(r, FrameEstimate)]
                # Within the model's own noise (its predicted std), and never across the child/adult gap.
                for k, mean in zip(ORIENTATIONS, means, strict=True):
                    assert abs(mean - means[0]) <= max(1.0, stds[0]), (age, k, mean, means[0])
                if age < 12:
                    assert max(means) < 18, means  # ignoring the tag reads these at 38-65
    finally:
        engine.close()
