"""Decoding untrusted image bytes with Pillow, under limits.

Frames come from users, so every check happens before the expensive step it guards: bytes before
parsing, header dimensions before pixel decoding (decompression bombs), format from the bytes
themselves rather than from the declared content type. Failures are `ImageDecodeError` with a short
stable reason code that the stream maps to dead letters and metrics.

Phones store most photos sideways with an EXIF Orientation tag; the model was trained on upright
faces and a sideways child can read as an adult, so the tag is applied before anything else looks
at the pixels. A tag that cannot be read or holds a value outside the 8 defined ones is refused
(`bad_exif`, `bad_orientation`) rather than guessed.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from model.errors import ImageDecodeError

# Content types we accept, and the Pillow format each must turn out to be.
CONTENT_TYPES: dict[str, str] = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
}
# Modes that convert to RGB without guessing (no colour management, no bit-depth reduction).
_ALLOWED_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA", "1"})
# EXIF Orientation values (TIFF 6.0 / EXIF 2.3): 1 is upright, 2-8 are the flips and rotations.
_ORIENTATIONS = frozenset(range(1, 9))


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_bytes: int = 8_000_000
    max_pixels: int = 25_000_000
    formats: frozenset[str] = field(default_factory=lambda: frozenset({"JPEG", "PNG", "WEBP"}))


def decode_rgb(data: bytes, content_type: str, size: int, limits: DecodeLimits) -> np.ndarray:
    """Decode one frame to a (size, size, 3) uint8 array, or raise ImageDecodeError."""
    if not data:
        raise ImageDecodeError("empty", "frame has zero bytes")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError("too_large", f"{len(data)} bytes exceeds the limit of {limits.max_bytes}")
    declared = CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
    if declared is None or declared not in limits.formats:
        raise ImageDecodeError("unsupported_format", f"content type {content_type[:64]!r} is not accepted")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns below 2x its limit; ours is explicit, so make it an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=sorted(limits.formats))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageDecodeError(
                    "decompression_bomb", f"{width}x{height} pixels exceeds the limit of {limits.max_pixels}"
                )
            if width < 1 or height < 1:
                raise ImageDecodeError("corrupt", f"invalid dimensions {width}x{height}")
            if image.mode not in _ALLOWED_MODES:
                raise ImageDecodeError("unsupported_mode", f"image mode {image.mode!r} is not accepted")
            if image.format == "JPEG":
                # Let libjpeg downscale by 1/2..1/8 while decoding: far less work for large frames.
                image.draft("RGB", (size, size))
            image.load()
            _apply_orientation(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("decompression_bomb", str(exc)[:200]) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("unsupported_format", "bytes are not an accepted image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated data, bad chunks, CRC errors: Pillow reports these as OSError/SyntaxError.
        raise ImageDecodeError("corrupt", f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8)


def _apply_orientation(image: Image.Image) -> None:
    """Turn a loaded image upright in place as its EXIF Orientation says (width x height is unchanged,
    so the bomb limit checked before still holds)."""
    if _orientation(image) == 1:
        return
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # rewriting a malformed EXIF block after the transpose
        raise ImageDecodeError("bad_exif", f"EXIF block unreadable: {type(exc).__name__}") from None


def _orientation(image: Image.Image) -> int:
    """The EXIF Orientation of a loaded image (1 when absent); ImageDecodeError when unreadable or undefined."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as exc:  # malformed EXIF blocks surface as struct/TypeError/ValueError and others
        raise ImageDecodeError("bad_exif", f"EXIF block unreadable: {type(exc).__name__}") from None
    if not isinstance(value, int) or value not in _ORIENTATIONS:
        raise ImageDecodeError("bad_orientation", f"EXIF Orientation {str(value)[:20]!r} is not one of 1-8")
    return value
