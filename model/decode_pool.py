"""Decoding frames in worker processes, so decode runs beside the event loop and the forward pass.

Measured on an H200 (bench/results/gpu-h200.txt): the forward pass takes 64 frames in ~1.4 ms
(47,000 frames/s) while one thread decodes ~5,000 JPEG frames/s, and inside the worker that thread
shares the interpreter lock with the event loop. Decoding holds the lock for much of its work
(Pillow's header and EXIF parsing are Python), so threads do not help; processes do.

The pool splits a batch into one contiguous chunk per process and reassembles the results in input
order. A frame that kills its decoder process (a bomb that escapes the limits, a crash in a codec)
must fail alone: the broken chunk is decoded again one frame per task in a fresh pool, and a frame
that breaks that pool too is reported as `decoder_crashed`. Only numpy and Pillow are imported in
the children (this module and model/decode.py), and they are started by a fork server, not forked
from a process holding torch threads and an event loop.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.util import Finalize

import numpy as np

from model.decode import DecodeLimits, decode_rgb
from model.errors import ImageDecodeError

# Per frame, in input order: its (S, S, 3) uint8 pixels, or why it failed (reason, detail).
Decoded = np.ndarray | tuple[str, str]


def decode_chunk(frames: Sequence[tuple[bytes, str]], size: int, limits: DecodeLimits) -> list[Decoded]:
    """Runs in a pool process: every frame decoded or given its reason, never an exception."""
    out: list[Decoded] = []
    for data, content_type in frames:
        try:
            out.append(decode_rgb(data, content_type, size, limits))
        except ImageDecodeError as exc:
            out.append((exc.reason, exc.detail))
        except Exception as exc:  # a decoder bug fails only its own frame
            out.append(("decode_failed", f"{type(exc).__name__}: {str(exc)[:200]}"))
    return out


# How often a decoder checks that the process it decodes for is still alive (seconds).
OWNER_CHECK_S = 1.0


def _exit_with_owner(owner: int) -> None:
    """Pool initializer: a daemon thread ends this decoder once its owner is gone. The decoders are
    children of the fork server, not of the owner, so a SIGKILLed worker would otherwise leave them
    waiting for work for ever (in a pod the container goes with it; on a laptop they stayed)."""

    def watch() -> None:
        while True:
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # alive, owned by another user (cannot happen here, but alive)
                pass
            threading.Event().wait(OWNER_CHECK_S)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


class DecodePool:
    """`processes` decoder processes; `decode` is called from one thread at a time (the engine's)."""

    def __init__(
        self,
        processes: int,
        size: int,
        limits: DecodeLimits,
        *,
        chunk_decoder: Callable[[Sequence[tuple[bytes, str]], int, DecodeLimits], list[Decoded]] | None = None,
    ) -> None:
        """`chunk_decoder` (a module-level function, run in the children): `decode_chunk` unless a
        test needs a decoder that dies."""
        if processes < 1:
            raise ValueError("a decode pool needs at least one process")
        self.processes = processes
        self.size = size
        self.limits = limits
        self.restarts = 0
        self._decode_chunk = chunk_decoder or decode_chunk
        self._lock = threading.Lock()
        self._executor = self._new_executor()
        # Shut down before multiprocessing's exit hook joins the children. In a process that is itself
        # a multiprocessing child (no atexit, no threading shutdown there) an idle decoder waiting for
        # work hung that join about one time in four; a finalizer with a priority runs first.
        self._finalizer = Finalize(None, self.close, exitpriority=100)

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_exit_with_owner,
            initargs=(os.getpid(),),
        )

    def _restart(self) -> None:
        with self._lock:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()
            self.restarts += 1

    def decode(self, frames: Sequence[tuple[bytes, str]]) -> list[Decoded]:
        if not frames:
            return []
        step = -(-len(frames) // self.processes)
        chunks = [list(frames[i : i + step]) for i in range(0, len(frames), step)]
        try:
            futures = [self._executor.submit(self._decode_chunk, c, self.size, self.limits) for c in chunks]
        except BrokenProcessPool:
            self._restart()
            futures = [self._executor.submit(self._decode_chunk, c, self.size, self.limits) for c in chunks]
        out: list[Decoded] = []
        for chunk, future in zip(chunks, futures, strict=True):
            out.extend(self._result(chunk, future))
        return out

    def _result(self, chunk: list[tuple[bytes, str]], future: Future[list[Decoded]]) -> list[Decoded]:
        try:
            return future.result()
        except BrokenProcessPool:
            pass
        # A decoder process died on this chunk (or beside it): each frame again, alone.
        self._restart()
        out: list[Decoded] = []
        for frame in chunk:
            try:
                out.extend(self._executor.submit(self._decode_chunk, [frame], self.size, self.limits).result())
            except BrokenProcessPool:
                self._restart()
                out.append(("decoder_crashed", "the decoder process died on this frame"))
        return out

    def close(self) -> None:
        """Stop the decoders and wait for them to exit (idempotent; also run when the process exits)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
