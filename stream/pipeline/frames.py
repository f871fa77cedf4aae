"""Turn an event's frame records into encoded bytes, fetching URIs only from configured stores.

A frame is inline bytes or a URI. URIs are fetched only below a configured root (a local directory
or an HTTP(S) prefix), with limits on size and time; any other URI, and any redirect that leaves
the stores, is a per-frame error, so events cannot make the worker request arbitrary addresses.

An event carries at most `max_frames` frames that are looked at: the rest are neither fetched nor
decoded and come back as `frames_over_limit` errors (the decision says so with the reason code of
the same name), so one event with hundreds of frames costs no more than one with `max_frames`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from model.engine import EncodedFrame, FrameError

ALLOWED_CONTENT_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
TRANSIENT_REASONS = frozenset({"fetch_timeout", "fetch_unavailable"})
FRAMES_OVER_LIMIT = "frames_over_limit"
_MAX_REDIRECTS = 3


@dataclass(frozen=True, slots=True)
class FrameStores:
    roots: tuple[str, ...]
    max_bytes: int
    timeout_s: float

    @classmethod
    def parse(cls, roots: str, *, max_bytes: int, timeout_s: float) -> FrameStores:
        return cls(tuple(r.strip() for r in roots.split(",") if r.strip()), max_bytes, timeout_s)

    def allows(self, uri: str) -> bool:
        parts = urlsplit(uri)
        if parts.scheme not in {"file", "http", "https"} or ".." in unquote(parts.path).split("/"):
            return False
        if parts.username or parts.password:
            return False
        return any(uri.startswith(root) for root in self.roots)


class FrameResolver:
    def __init__(self, stores: FrameStores, *, max_frames: int = 16) -> None:
        self.stores = stores
        self.max_frames = max_frames
        self._session: Any = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def resolve_all(self, frames: Sequence[Mapping[str, Any]]) -> list[EncodedFrame | FrameError]:
        """One result per frame, in order; frames past `max_frames` are ignored (`frames_over_limit`)."""
        (resolved,) = await self.resolve_many([frames])
        return resolved

    async def resolve_many(
        self, per_event: Sequence[Sequence[Mapping[str, Any]]]
    ) -> list[list[EncodedFrame | FrameError]]:
        """`resolve_all` for a batch of events: inline frames are checked in place, and only the
        frames behind URIs are fetched, all concurrently, so a batch of inline frames costs no task."""
        over = FrameError(FRAMES_OVER_LIMIT, f"only the first {self.max_frames} frames of an event are scored")
        out: list[list[EncodedFrame | FrameError]] = []
        fetches: list[tuple[list[EncodedFrame | FrameError], int, Mapping[str, Any]]] = []
        for frames in per_event:
            row: list[EncodedFrame | FrameError] = []
            for frame in frames[: self.max_frames]:
                source = frame.get("source") or {}
                if "data" in source:
                    row.append(self._inline(source["data"], source.get("content_type") or ""))
                else:
                    fetches.append((row, len(row), frame))
                    row.append(over)  # placeholder, replaced below
            row.extend([over] * max(0, len(frames) - self.max_frames))
            out.append(row)
        if fetches:
            fetched = await asyncio.gather(*(self.resolve(frame) for _, _, frame in fetches))
            for (row, i, _), result in zip(fetches, fetched, strict=True):
                row[i] = result
        return out

    async def resolve(self, frame: Mapping[str, Any]) -> EncodedFrame | FrameError:
        source = frame.get("source") or {}
        if "data" in source:
            return self._inline(source["data"], source.get("content_type") or "")
        uri = str(source.get("uri", ""))
        if not self.stores.allows(uri):
            return FrameError("uri_not_allowed", "the frame URI is not inside a configured frame store")
        try:
            if uri.startswith("file:"):
                data = await asyncio.to_thread(self._read_file, uri)
            else:
                data = await asyncio.wait_for(self._fetch_http(uri), timeout=self.stores.timeout_s)
        except TimeoutError:
            return FrameError("fetch_timeout", f"fetch took longer than {self.stores.timeout_s}s")
        except _FrameFetchError as exc:
            return FrameError(exc.reason, exc.detail)
        if isinstance(data, FrameError):
            return data
        content_type = source.get("content_type") or _sniff(data)
        return self._inline(data, content_type)

    def _inline(self, data: bytes, content_type: str) -> EncodedFrame | FrameError:
        if content_type not in ALLOWED_CONTENT_TYPES:
            return FrameError("unsupported_content_type", f"content type {content_type[:40]!r} is not accepted")
        if len(data) > self.stores.max_bytes:
            return FrameError("too_large", f"{len(data)} bytes exceeds the {self.stores.max_bytes}-byte limit")
        return EncodedFrame(data, content_type)

    def _read_file(self, uri: str) -> bytes:
        path = Path(unquote(urlsplit(uri).path)).resolve()
        for root in self.stores.roots:
            if root.startswith("file:"):
                base = Path(unquote(urlsplit(root).path)).resolve()
                if path.is_relative_to(base):
                    break
        else:  # a symlink pointing out of the store
            raise _FrameFetchError("uri_not_allowed", "the frame path resolves outside the frame store")
        try:
            size = path.stat().st_size
            if size > self.stores.max_bytes:
                raise _FrameFetchError("too_large", f"{size} bytes exceeds the {self.stores.max_bytes}-byte limit")
            return path.read_bytes()
        except FileNotFoundError:
            raise _FrameFetchError("fetch_not_found", "no frame at that path") from None
        except OSError as exc:
            raise _FrameFetchError("fetch_unavailable", f"{type(exc).__name__}") from None

    async def _fetch_http(self, uri: str) -> bytes:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.stores.timeout_s))
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                async with self._session.get(uri, allow_redirects=False) as response:
                    if response.status in {301, 302, 303, 307, 308}:
                        target = urljoin(uri, response.headers.get("Location", ""))
                        if not self.stores.allows(target):
                            raise _FrameFetchError("redirect_not_allowed", "redirect leaves the frame stores")
                        uri = target
                        continue
                    if response.status == 404:
                        raise _FrameFetchError("fetch_not_found", "the store has no such frame (404)")
                    if response.status >= 500:
                        raise _FrameFetchError("fetch_unavailable", f"the store answered {response.status}")
                    if response.status != 200:
                        raise _FrameFetchError("fetch_failed", f"the store answered {response.status}")
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(65536):
                        body += chunk
                        if len(body) > self.stores.max_bytes:
                            raise _FrameFetchError("too_large", f"more than {self.stores.max_bytes} bytes")
                    return bytes(body)
            except aiohttp.ClientError as exc:
                raise _FrameFetchError("fetch_unavailable", type(exc).__name__) from None
        raise _FrameFetchError("redirect_not_allowed", f"more than {_MAX_REDIRECTS} redirects")


class _FrameFetchError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _sniff(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
