"""Decoding in processes (AGEGATE_DECODE_PROCESSES) scores exactly as decoding in the inference thread,
and a frame that kills its decoder process fails alone."""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from model.decode import DecodeLimits
from model.decode_pool import (
    _ANSWER,
    CRASHED,
    TIMED_OUT,
    Decoded,
    DecodePool,
    DecoderDied,
    _answer,
    _Decoder,
    _meta_allowance,
    decode_chunk,
)
from model.engine import EncodedFrame, FrameError, FrameEstimate, InferenceEngine
from model.testing import synthetic_face_jpeg

KILL = b"kill this decoder"
HANG = b"hang this decoder"


def dying_decode_chunk(frames: Sequence[tuple[bytes, str]], size: int, limits: DecodeLimits) -> list[Decoded]:
    """Runs in the pool's children: a frame holding KILL ends the process, as a codec crash would."""
    if any(data == KILL for data, _ in frames):
        os._exit(3)
    return decode_chunk(frames, size, limits)


def hanging_decode_chunk(frames: Sequence[tuple[bytes, str]], size: int, limits: DecodeLimits) -> list[Decoded]:
    """Runs in the pool's children: a frame holding HANG never finishes, as a codec stuck in a loop."""
    if any(data == HANG for data, _ in frames):
        threading.Event().wait()
    return decode_chunk(frames, size, limits)


def short_decode_chunk(frames: Sequence[tuple[bytes, str]], size: int, limits: DecodeLimits) -> list[Decoded]:
    """A decoder that answers for one frame fewer than it was sent, as a broken or subverted one might."""
    return decode_chunk(frames, size, limits)[:-1]


def frames() -> list[EncodedFrame]:
    good = [EncodedFrame(synthetic_face_jpeg(age, seed=i), "image/jpeg") for i, age in enumerate((9, 15, 17, 19, 33))]
    bad = [
        EncodedFrame(b"\xff\xd8 not a jpeg", "image/jpeg"),
        EncodedFrame(good[0].data[:200], "image/jpeg"),  # truncated
        EncodedFrame(good[1].data, "image/gif"),  # a type we do not accept
    ]
    return [good[0], bad[0], good[1], good[2], bad[1], good[3], bad[2], good[4]]


@pytest.fixture(scope="module")
def pooled(tiny_model: Path) -> Iterator[InferenceEngine]:
    engine = InferenceEngine.from_checkpoint(tiny_model, device="cpu", threads=1, decode_processes=2)
    yield engine
    engine.close()


def test_decoding_in_processes_scores_exactly_as_in_the_thread(tiny_model: Path, pooled: InferenceEngine) -> None:
    in_thread = InferenceEngine.from_checkpoint(tiny_model, device="cpu", threads=1)
    batch = frames()
    expected, got = in_thread.score(batch), pooled.score(batch)
    assert [type(r) for r in got] == [type(r) for r in expected]
    assert sum(isinstance(r, FrameError) for r in got) == 3
    for a, b in zip(expected, got, strict=True):
        if isinstance(a, FrameEstimate):
            assert isinstance(b, FrameEstimate)
            assert (a.mean, a.std) == pytest.approx((b.mean, b.std), abs=1e-5)
        else:
            assert isinstance(b, FrameError)
            assert b.reason == a.reason


def test_the_pool_splits_a_batch_over_its_processes_and_keeps_the_order() -> None:
    pool = DecodePool(3, 32, DecodeLimits())
    try:
        data = [(synthetic_face_jpeg(20, seed=i), "image/jpeg") for i in range(7)] + [(b"junk", "image/jpeg")]
        out = pool.decode(data).frames()
        alone = decode_chunk(data, 32, DecodeLimits())
    finally:
        pool.close()
    assert len(out) == 8
    for a, b in zip(alone, out, strict=True):
        if isinstance(a, tuple):
            assert b == a
        else:
            assert isinstance(b, np.ndarray)
            assert np.array_equal(a, b)


def test_a_frame_that_kills_its_decoder_fails_alone_and_the_pool_recovers() -> None:
    pool = DecodePool(2, 32, DecodeLimits(), chunk_decoder=dying_decode_chunk)
    try:
        good = [(synthetic_face_jpeg(25, seed=i), "image/jpeg") for i in range(5)]
        out = pool.decode([good[0], good[1], (KILL, "image/jpeg"), good[2], good[3]]).frames()
        assert [isinstance(r, np.ndarray) for r in out] == [True, True, False, True, True]
        assert out[2] == CRASHED
        assert pool.restarts == 2  # the chunk's decoder, then the decoder that frame killed alone
        after = pool.decode([good[4]]).frames()  # the pool works again
        assert isinstance(after[0], np.ndarray)
    finally:
        pool.close()


def test_a_decoder_killed_between_batches_is_replaced_and_nothing_is_lost() -> None:
    """A decoder can die while idle (the kernel's out-of-memory killer): the next batch starts a new
    one. 64 frames of 64 px are about 800 kB of pixels, more than one socket buffer's worth."""
    pool = DecodePool(1, 64, DecodeLimits())
    try:
        data = [(synthetic_face_jpeg(30, seed=i), "image/jpeg") for i in range(64)]
        first = pool.decode(data)
        (pid,) = pool.pids
        os.kill(pid, 9)
        pool._decoders[0].process.join(30)
        second = pool.decode(data)
    finally:
        pool.close()
    assert pool.restarts == 1
    assert first.indices == second.indices == tuple(range(64))
    assert np.array_equal(first.pixels, second.pixels)
    assert np.array_equal(second.pixels[5], decode_chunk([data[5]], 64, DecodeLimits())[0])


def test_a_frame_that_hangs_its_decoder_fails_alone_and_the_pool_goes_on() -> None:
    """No input may stop the worker: a decoder that gives no answer within the bound is killed, the
    chunk decoded again frame by frame, and only the frame that hangs a fresh decoder too fails."""
    good = [(synthetic_face_jpeg(30, seed=i), "image/jpeg") for i in range(3)]
    # The bound must exceed a fresh decoder's first answer (it imports Pillow then), even on a busy machine.
    pool = DecodePool(1, 32, DecodeLimits(), chunk_decoder=hanging_decode_chunk, answer_timeout_s=8)
    try:
        (first_pid,) = pool.pids
        hung = pool.decode([good[0], (HANG, "image/jpeg"), good[1]]).frames()
        after = pool.decode(good).frames()
    finally:
        pool.close()
    assert hung[1] == TIMED_OUT
    assert np.array_equal(hung[0], decode_chunk([good[0]], 32, DecodeLimits())[0])
    assert np.array_equal(hung[2], decode_chunk([good[1]], 32, DecodeLimits())[0])
    assert pool.restarts == 2  # the batch, then the frame alone
    assert [type(r) for r in after] == [np.ndarray] * 3
    assert not _alive(first_pid), "the hung decoder was left running"


def test_an_answer_that_does_not_match_the_request_fails_its_frames_not_the_worker() -> None:
    """The answer's frame positions must cover the request exactly; otherwise the decoder is replaced
    and its frames are reported as crashed, never scored with someone else's pixels."""
    pool = DecodePool(1, 32, DecodeLimits(), chunk_decoder=short_decode_chunk)
    try:
        out = pool.decode([(synthetic_face_jpeg(25, seed=i), "image/jpeg") for i in range(3)]).frames()
    finally:
        pool.close()
    assert out == [CRASHED, CRASHED, CRASHED]
    assert pool.restarts == 4  # the batch, then each frame alone


def test_an_answer_larger_than_its_request_is_refused_before_it_is_read() -> None:
    """Counts come from the decoder, which parses untrusted images: an answer claiming more decoded
    frames than were sent, or announcing gigabytes of JSON beyond its fixed size, must fail the chunk,
    not make the worker read or allocate them."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)  # without the bound the read would wait for bytes that never come: fail, not hang
    fixed = 4 * 32 * 32 * 3 + _meta_allowance(4)  # what follows the header in an answer to 4 frames
    try:
        theirs.sendall(_ANSWER.pack(5, 0) + bytes(fixed))  # one frame more than was sent
        with pytest.raises(DecoderDied, match="larger than the request allows"):
            _Decoder.receive(SimpleNamespace(sock=ours), 4, 32)  # type: ignore[arg-type]  # only .sock is used
        theirs.sendall(_ANSWER.pack(4, 1 << 40) + bytes(fixed))
        with pytest.raises(DecoderDied, match="larger than the request allows"):
            _Decoder.receive(SimpleNamespace(sock=ours), 4, 32)  # type: ignore[arg-type]
    finally:
        ours.close()
        theirs.close()


def test_an_answer_whose_reasons_outgrow_its_fixed_size_is_read_whole() -> None:
    """Many failed frames with long reasons need more JSON than an answer's fixed size carries; the rest
    is read after it, and every frame keeps its own reason."""
    n, size = 6, 32
    results: list[Decoded] = [("decode_failed", f"{i} " + "x" * 290) for i in range(n - 1)]
    results.insert(2, np.full((size, size, 3), 7, np.uint8))
    answer = _answer(results, size, n)
    assert len(answer) > _ANSWER.size + n * size * size * 3 + _meta_allowance(n)  # the case under test
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    try:
        theirs.sendall(answer + _answer(results[2:3], size, 1))  # and the next answer stays unread
        got = _Decoder.receive(SimpleNamespace(sock=ours), n, size)  # type: ignore[arg-type]
        following = _Decoder.receive(SimpleNamespace(sock=ours), 1, size)  # type: ignore[arg-type]
    finally:
        ours.close()
        theirs.close()
    assert got.indices == (2,)
    assert np.array_equal(got.pixels[0], results[2])
    assert got.errors == {i: results[i] for i in range(n) if i != 2}
    assert following.indices == (0,)
    assert following.errors == {}


def test_a_pool_needs_a_process() -> None:
    with pytest.raises(ValueError, match="at least one process"):
        DecodePool(0, 32, DecodeLimits())


def decode_and_return_without_closing() -> None:
    """A multiprocessing child (as bench/pipeline.py's K pipelines) that leaves its pool open."""
    pool = DecodePool(2, 32, DecodeLimits())
    assert len(pool.decode([(synthetic_face_jpeg(30, seed=1), "image/jpeg")] * 4).frames()) == 4


def test_a_child_process_that_never_closes_its_pool_still_exits() -> None:
    """multiprocessing joins a child's children as it exits; idle decoders waiting for work hung that
    join about one time in four, so the pool shuts itself down first. Several runs: it was intermittent."""
    ctx = multiprocessing.get_context("spawn")
    for _ in range(6):
        child = ctx.Process(target=decode_and_return_without_closing)
        child.start()
        child.join(timeout=120)
        hung = child.exitcode is None
        if hung:
            child.kill()
        assert not hung, "the child hung at exit with its decode pool open"
        assert child.exitcode == 0


def own_a_pool_and_report_its_decoders(out: Any) -> None:
    """A multiprocessing child that starts decoders, says who they are, then waits to be killed."""
    pool = DecodePool(2, 32, DecodeLimits())
    pool.decode([(synthetic_face_jpeg(30, seed=1), "image/jpeg")] * 4)
    out.put(sorted(pool.pids))
    threading.Event().wait(300)


def test_the_decoders_of_a_killed_owner_exit() -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    owner = ctx.Process(target=own_a_pool_and_report_its_decoders, args=(out,))
    owner.start()
    decoders = out.get(timeout=120)
    assert len(decoders) == 2
    assert all(_alive(p) for p in decoders)
    owner.kill()
    owner.join(30)
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in decoders) and time.monotonic() < deadline:
        threading.Event().wait(0.2)  # polling a condition (the decoders' pids), with a deadline
    assert not any(_alive(p) for p in decoders), "decoders outlived their SIGKILLed owner"


def _alive(pid: int) -> bool:
    """A live process, not a zombie waiting for its parent (the fork server) to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
