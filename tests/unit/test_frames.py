"""Frame URIs: fetched only from configured stores, with limits; everything else fails alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from model.engine import EncodedFrame, FrameError
from stream.pipeline.frames import FRAMES_OVER_LIMIT, FrameResolver, FrameStores
from stream.tools import events

JPEG = b"\xff\xd8\xff\xe0" + b"x" * 100


def resolver(*roots: str, max_bytes: int = 10_000) -> FrameResolver:
    return FrameResolver(FrameStores(tuple(roots), max_bytes=max_bytes, timeout_s=2.0))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "frames"
    root.mkdir()
    (root / "a.jpg").write_bytes(JPEG)
    (root / "big.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 20_000)
    (tmp_path / "secret.jpg").write_bytes(JPEG)
    (root / "escape.jpg").symlink_to(tmp_path / "secret.jpg")
    return root


async def test_inline_frames_are_checked_for_type_and_size() -> None:
    r = resolver()
    assert await r.resolve(events.inline_frame("f", JPEG)) == EncodedFrame(JPEG, "image/jpeg")
    gif = await r.resolve(events.inline_frame("f", b"GIF89a", "image/gif"))
    assert isinstance(gif, FrameError)
    assert gif.reason == "unsupported_content_type"
    big = await resolver(max_bytes=10).resolve(events.inline_frame("f", JPEG))
    assert isinstance(big, FrameError)
    assert big.reason == "too_large"


async def test_file_store_serves_only_inside_its_root(store: Path) -> None:
    r = resolver(f"file://{store}/")
    ok = await r.resolve(events.uri_frame("f", f"file://{store}/a.jpg"))
    assert ok == EncodedFrame(JPEG, "image/jpeg")  # content type sniffed
    cases = {
        f"file://{store}/../secret.jpg": "uri_not_allowed",  # traversal
        f"file://{store}/escape.jpg": "uri_not_allowed",  # symlink out of the store
        f"file://{store.parent}/secret.jpg": "uri_not_allowed",  # another directory
        f"file://{store}/missing.jpg": "fetch_not_found",
        f"file://{store}/big.jpg": "too_large",
        "ftp://example.org/a.jpg": "uri_not_allowed",
        "http://169.254.169.254/latest/meta-data": "uri_not_allowed",
    }
    for uri, reason in cases.items():
        result = await r.resolve(events.uri_frame("f", uri))
        assert isinstance(result, FrameError), uri
        assert result.reason == reason, uri


@pytest.fixture
async def http_store() -> AsyncIterator[str]:
    async def frame(_: web.Request) -> web.Response:
        return web.Response(body=JPEG, content_type="image/jpeg")

    async def inside(_: web.Request) -> web.Response:
        raise web.HTTPFound("/store/a.jpg")

    async def outside(_: web.Request) -> web.Response:
        raise web.HTTPFound("http://127.0.0.2:1/private")

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/store/a.jpg", frame)
    app.router.add_get("/store/moved.jpg", inside)
    app.router.add_get("/store/leak.jpg", outside)
    app.router.add_get("/store/broken.jpg", broken)
    app.router.add_get("/private", frame)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_http_store_follows_only_redirects_that_stay_inside(http_store: str) -> None:
    r = resolver(f"{http_store}/store/")
    try:
        assert await r.resolve(events.uri_frame("f", f"{http_store}/store/a.jpg")) == EncodedFrame(JPEG, "image/jpeg")
        assert await r.resolve(events.uri_frame("f", f"{http_store}/store/moved.jpg")) == EncodedFrame(
            JPEG, "image/jpeg"
        )
        leak = await r.resolve(events.uri_frame("f", f"{http_store}/store/leak.jpg"))
        assert isinstance(leak, FrameError)
        assert leak.reason == "redirect_not_allowed"
        outside = await r.resolve(events.uri_frame("f", f"{http_store}/private"))
        assert isinstance(outside, FrameError)
        assert outside.reason == "uri_not_allowed"
        broken = await r.resolve(events.uri_frame("f", f"{http_store}/store/broken.jpg"))
        assert isinstance(broken, FrameError)
        assert broken.reason == "fetch_unavailable"  # transient: decided safely, not dead-lettered
    finally:
        await r.close()


async def test_frames_past_the_per_event_limit_are_ignored_unlooked_at() -> None:
    r = FrameResolver(FrameStores((), max_bytes=10_000, timeout_s=2.0), max_frames=16)
    kept = [events.inline_frame(f"f{i}", JPEG) for i in range(16)]
    # Past the limit: frames that would fail differently if they were resolved (no store allows them).
    rest = [events.uri_frame(f"u{i}", f"http://169.254.169.254/{i}") for i in range(184)]
    results = await r.resolve_all(kept + rest)
    assert len(results) == 200  # one result per frame, in order
    assert results[:16] == [EncodedFrame(JPEG, "image/jpeg")] * 16
    assert all(isinstance(x, FrameError) and x.reason == FRAMES_OVER_LIMIT for x in results[16:])
    assert await r.resolve_all(kept) == [EncodedFrame(JPEG, "image/jpeg")] * 16  # at the limit: all scored
