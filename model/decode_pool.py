"""Decoding frames in dedicated processes, so decode's Python runs off the worker's interpreter.

Measured on an H200 (bench/results/gpu-h200.txt): the forward pass takes 64 frames in ~1.4 ms
(47,000 frames/s) while one thread decodes ~5,000 JPEG frames/s. Inside the worker that thread
shares the interpreter lock with the event loop, and decoding takes and drops the lock several times
per frame (Pillow's header and EXIF parsing are Python; only the codec releases it). Each time it
wants the lock back it waits for the busy event loop to yield, up to `sys.getswitchinterval()` (5 ms):
measured on the 2-core CI machine, a thread that decodes 4,000-6,000 frames/s alone managed
1,700-1,900 beside a thread busy two thirds of the time (stop 24's note has the microbenchmark).

So each decoder is one process with one socket to its owner, and a batch costs the owner a handful
of blocking system calls, not several lock handoffs per frame: the request (every frame's bytes in
one message) goes out with `sendall`, and the answer comes back with one `recv_into(..., MSG_WAITALL)`,
which sleeps in the kernel until all of it has arrived. For that one call the owner must know the
answer's size before reading it, so the answer has a fixed size for a request of n frames: a small
header, n frames' worth of pixels (the decoded ones first, the rest zeros) and a fixed allowance for
the JSON saying which frames failed and why; only a JSON longer than that (many failed frames with
long reasons) costs a second read. Every blocking call hands the interpreter lock to the event loop
and waits to get it back, up to a switch interval (5 ms) beside a loop that never blocks: there, a
second read of an answer that had already arrived took 5.3 ms per 64-frame batch. On the no-op
worker with one decoder (bench/worker.py's `worker-noop dp1`), one read instead of two gave 1,894 to
1,922 events/s against 1,786 to 1,858, in alternating runs.
`concurrent.futures.ProcessPoolExecutor` was measured worse than decoding in the thread: its two
helper threads in the owner add lock handoffs rather than remove them.

A frame that kills its decoder (a bomb that escapes the limits, a crash in a codec) must fail alone:
the broken chunk is decoded again one frame at a time by a fresh decoder, and a frame that kills that
one too is reported as `decoder_crashed`. A frame that hangs its decoder (no known input does; a
codec bug might) must not stop the worker either: a decoder that has not answered within
`answer_timeout_s` is killed and treated as crashed, and the frame that hangs a fresh one too is
reported as `decoder_timed_out`. The bound is the kernel's (`SO_RCVTIMEO`, `SO_SNDTIMEO`), so waiting
for an answer is still one blocking call. Only numpy and Pillow are imported in the children (this
module and model/decode.py), and they are started by a fork server, not forked from a process holding
torch threads and an event loop. A decoder exits when its socket closes, which is also what happens
when its owner is killed: no decoder outlives the process it decodes for.
"""

from __future__ import annotations

import json
import multiprocessing
import pickle
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.util import Finalize

import numpy as np

from model.decode import DecodeLimits, decode_rgb
from model.errors import ImageDecodeError

# Per frame, in input order: its (S, S, 3) uint8 pixels, or why it failed (reason, detail).
Decoded = np.ndarray | tuple[str, str]
ChunkDecoder = Callable[[Sequence[tuple[bytes, str]], int, DecodeLimits], list[Decoded]]

# Requests are one length-prefixed pickle. An answer to n frames is a header (frames decoded, length of
# the JSON), n frames of pixels (the decoded ones in order, then zeros), then the JSON of which frames
# decoded and why the others did not, padded with spaces to `_meta_allowance(n)` when shorter.
_LENGTH = struct.Struct("!Q")
_ANSWER = struct.Struct("!QQ")
# Socket buffers large enough for a 64-frame batch in one go where the kernel allows (it caps them).
_SOCKET_BUFFER = 4 << 20
# An answer's JSON is a few dozen bytes per frame; anything far larger is not an answer.
_MAX_META_BYTES = 1 << 20
# How long `close` waits for a decoder to exit after its socket closed before killing it (seconds).
_EXIT_WAIT_S = 5.0
CRASHED = ("decoder_crashed", "the decoder process died on this frame")
TIMED_OUT = ("decoder_timed_out", "the decoder gave no answer in time on this frame")
# How long a decoder may take to answer one request before it is taken as hung (seconds). Far above
# any frame within DecodeLimits, so only a hang reaches it; a slow batch that did would be decoded
# again frame by frame, each with the whole bound.
ANSWER_TIMEOUT_S = 60.0


def _meta_allowance(n: int) -> int:
    """Bytes of JSON an answer to n frames carries in its fixed size: all decoded is about 4 bytes a
    frame, a failed frame's short reason about 40 (`{"ok": [...], "errors": [[i, reason, detail]]}`)."""
    return 256 + 64 * n


def decode_chunk(frames: Sequence[tuple[bytes, str]], size: int, limits: DecodeLimits) -> list[Decoded]:
    """Runs in a decoder: every frame decoded or given its reason, never an exception."""
    out: list[Decoded] = []
    for data, content_type in frames:
        try:
            out.append(decode_rgb(data, content_type, size, limits))
        except ImageDecodeError as exc:
            out.append((exc.reason, exc.detail))
        except Exception as exc:  # a decoder bug fails only its own frame
            out.append(("decode_failed", f"{type(exc).__name__}: {str(exc)[:200]}"))
    return out


@dataclass(frozen=True, slots=True)
class PooledBatch:
    """A batch decoded by the pool: the frames that decoded, stacked, and the reasons of the others."""

    pixels: np.ndarray  # (n_ok, S, S, 3) uint8
    indices: tuple[int, ...]  # input position of each row of `pixels`
    errors: dict[int, tuple[str, str]]  # input position -> (reason, detail)

    def frames(self) -> list[Decoded]:
        """Per frame, in input order (for tests and callers that want one result per frame)."""
        out: list[Decoded | None] = [None] * (len(self.indices) + len(self.errors))
        for row, i in enumerate(self.indices):
            out[i] = self.pixels[row]
        for i, error in self.errors.items():
            out[i] = error
        return [r for r in out if r is not None]


class DecoderDied(Exception):
    """The decoder process ended (crashed, killed) or hung before answering."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def _died(exc: OSError) -> DecoderDied:
    """A socket error as DecoderDied: the kernel's timeout (EAGAIN, as `SO_RCVTIMEO` and `SO_SNDTIMEO`
    report it) means the decoder hung; anything else that it is gone."""
    return DecoderDied(f"{type(exc).__name__}: {exc}", timed_out=isinstance(exc, BlockingIOError))


def _send_message(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def _recv_exactly(sock: socket.socket, n: int) -> bytearray:
    """`n` bytes, waiting in the kernel for all of them (one lock handoff in the common case)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got, socket.MSG_WAITALL)
        if k == 0:
            raise DecoderDied("the decoder's socket closed")
        got += k
    return buf


def _serve(sock: socket.socket, decode: ChunkDecoder, size: int, limits: DecodeLimits) -> None:
    """A decoder's whole life: answer requests until the owner closes the socket (or dies)."""
    while True:
        try:
            (length,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size))
            # Unpickling is safe in this direction only: the request comes from the owner.
            frames: list[tuple[bytes, str]] = pickle.loads(_recv_exactly(sock, length))
        except (DecoderDied, ConnectionError):
            return
        results = decode(frames, size, limits)
        try:
            sock.sendall(_answer(results, size, len(frames)))
        except ConnectionError:
            return


def _answer(results: Sequence[Decoded], size: int, n: int) -> bytes:
    """The answer to a request of `n` frames, whatever `results` holds: the owner reads the size the
    request implies and checks the contents (a short answer must fail the chunk, not hang the owner)."""
    indices = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
    errors = [[i, r[0], r[1]] for i, r in enumerate(results) if isinstance(r, tuple)]
    pixels = np.zeros((n, size, size, 3), np.uint8)
    for row, i in enumerate(indices):
        pixels[row] = results[i]
    meta = json.dumps({"ok": indices, "errors": errors}).encode()
    padded = meta.ljust(_meta_allowance(n), b" ")
    return b"".join((_ANSWER.pack(len(indices), len(meta)), pixels.data, padded))


def _parse_answer(meta: bytes, decoded: int, n: int) -> tuple[list[int], dict[int, tuple[str, str]]]:
    """The answer's (indices, errors), checked: a decoder parses untrusted images, so a decoder that an
    image took over must not be able to do more than fail its chunk (hence JSON, never pickle, here)."""
    try:
        parsed = json.loads(meta)
        indices = [int(i) for i in parsed["ok"]]
        errors = {int(i): (str(reason)[:64], str(detail)[:300]) for i, reason, detail in parsed["errors"]}
    except (ValueError, TypeError, KeyError) as exc:
        raise DecoderDied(f"unreadable answer: {type(exc).__name__}") from None
    if sorted([*indices, *errors]) != list(range(n)) or len(indices) != decoded:
        raise DecoderDied("the answer does not match the request")
    return indices, errors


class _Decoder:
    """One decoder process and the owner's end of its socket."""

    def __init__(self, decode: ChunkDecoder, size: int, limits: DecodeLimits, answer_timeout_s: float) -> None:
        ctx = multiprocessing.get_context("forkserver")
        self.sock, theirs = socket.socketpair()
        for s in (self.sock, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        # The owner's end only: a decoder waits for requests as long as its owner lives.
        seconds = int(answer_timeout_s)
        timeval = struct.pack("ll", seconds, int((answer_timeout_s - seconds) * 1_000_000))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        self.process: BaseProcess = ctx.Process(
            target=_serve, args=(theirs, decode, size, limits), name="agegate-decoder", daemon=True
        )
        self.process.start()
        theirs.close()

    def send(self, frames: Sequence[tuple[bytes, str]]) -> None:
        try:
            _send_message(self.sock, pickle.dumps(list(frames), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            raise _died(exc) from None

    def receive(self, n: int, size: int) -> PooledBatch:
        """The answer to a request of `n` frames: one read of its fixed size (see the module's docstring)."""
        frame_bytes = size * size * 3
        allowance = _meta_allowance(n)
        meta_at = _ANSWER.size + n * frame_bytes
        try:
            answer = _recv_exactly(self.sock, meta_at + allowance)
            decoded, meta_len = _ANSWER.unpack_from(answer)
            if decoded > n or meta_len > _MAX_META_BYTES:
                raise DecoderDied("the answer is larger than the request allows")
            meta = bytes(answer[meta_at : meta_at + min(meta_len, allowance)])
            if meta_len > allowance:
                meta += _recv_exactly(self.sock, meta_len - allowance)
        except OSError as exc:
            raise _died(exc) from None
        indices, errors = _parse_answer(meta, decoded, n)
        pixels = np.frombuffer(answer, np.uint8, count=decoded * frame_bytes, offset=_ANSWER.size)
        return PooledBatch(pixels.reshape(decoded, size, size, 3), tuple(indices), errors)

    def decode(self, frames: Sequence[tuple[bytes, str]], size: int) -> PooledBatch:
        self.send(frames)
        return self.receive(len(frames), size)

    def close(self, *, hung: bool = False) -> None:
        """`hung`: the decoder is stuck in a frame and will not read the end-of-file; kill it at once."""
        self.sock.close()  # the decoder reads end-of-file and returns
        self.process.join(0 if hung else _EXIT_WAIT_S)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(_EXIT_WAIT_S)


class DecodePool:
    """`processes` decoders; `decode` is called from one thread at a time (the engine's)."""

    def __init__(
        self,
        processes: int,
        size: int,
        limits: DecodeLimits,
        *,
        chunk_decoder: ChunkDecoder | None = None,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
    ) -> None:
        """`chunk_decoder` (a module-level function, run in the children): `decode_chunk` unless a
        test needs a decoder that dies or hangs."""
        if processes < 1:
            raise ValueError("a decode pool needs at least one process")
        self.processes = processes
        self.size = size
        self.limits = limits
        self.restarts = 0
        self.answer_timeout_s = answer_timeout_s
        self._decode_chunk = chunk_decoder or decode_chunk
        self._decoders = [self._start() for _ in range(processes)]
        # Close before multiprocessing's exit hook joins the children: in a process that is itself a
        # multiprocessing child (no atexit there) a finalizer with a priority is what runs first.
        self._finalizer = Finalize(self, DecodePool._close_all, args=(self._decoders,), exitpriority=100)

    @property
    def pids(self) -> list[int]:
        return [d.process.pid for d in self._decoders if d.process.pid is not None]

    def _start(self) -> _Decoder:
        return _Decoder(self._decode_chunk, self.size, self.limits, self.answer_timeout_s)

    def _restart(self, k: int, *, hung: bool = False) -> _Decoder:
        self._decoders[k].close(hung=hung)
        self._decoders[k] = self._start()
        self.restarts += 1
        return self._decoders[k]

    def decode(self, frames: Sequence[tuple[bytes, str]]) -> PooledBatch:
        """Every frame decoded or given its reason, in input order; a frame that kills a decoder fails
        alone. The batch is split into one contiguous chunk per decoder."""
        if not frames:
            return PooledBatch(np.zeros((0, self.size, self.size, 3), np.uint8), (), {})
        step = -(-len(frames) // self.processes)
        chunks = [frames[i : i + step] for i in range(0, len(frames), step)]
        sent: list[bool] = []
        for k, chunk in enumerate(chunks):
            try:
                self._decoders[k].send(chunk)
                sent.append(True)
            except DecoderDied:  # it died since the last batch (killed, out of memory): start another
                self._restart(k)
                sent.append(False)
        parts: list[PooledBatch] = []
        for k, chunk in enumerate(chunks):
            parts.append(self._receive(k, chunk) if sent[k] else self._one_by_one(k, chunk))
        return parts[0] if len(parts) == 1 else _concatenated(parts, step)

    def _receive(self, k: int, chunk: Sequence[tuple[bytes, str]]) -> PooledBatch:
        try:
            return self._decoders[k].receive(len(chunk), self.size)
        except DecoderDied as exc:
            hung = exc.timed_out
        # The decoder died or hung on this chunk: each frame again, alone, so the one to blame fails alone.
        self._restart(k, hung=hung)
        return self._one_by_one(k, chunk)

    def _one_by_one(self, k: int, chunk: Sequence[tuple[bytes, str]]) -> PooledBatch:
        parts: list[PooledBatch] = []
        for frame in chunk:
            try:
                parts.append(self._decoders[k].decode([frame], self.size))
            except DecoderDied as exc:
                self._restart(k, hung=exc.timed_out)
                reason = TIMED_OUT if exc.timed_out else CRASHED
                parts.append(PooledBatch(np.zeros((0, self.size, self.size, 3), np.uint8), (), {0: reason}))
        return _concatenated(parts, 1)

    def close(self) -> None:
        """Stop the decoders and wait for them to exit (idempotent; also run when the process exits)."""
        self._finalizer()

    @staticmethod
    def _close_all(decoders: list[_Decoder]) -> None:
        for decoder in decoders:
            decoder.close()


def _concatenated(parts: Sequence[PooledBatch], step: int) -> PooledBatch:
    """Parts of one batch, part k holding input positions from k * step, as one batch."""
    pixels = np.concatenate([p.pixels for p in parts])
    indices = tuple(k * step + i for k, p in enumerate(parts) for i in p.indices)
    errors = {k * step + i: e for k, p in enumerate(parts) for i, e in p.errors.items()}
    return PooledBatch(pixels, indices, errors)
