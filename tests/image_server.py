"""A loopback image server for the download tests and the streaming benchmark: fixture images, every download fault
(HTTP errors, flaky 503s, slow answers, truncated bodies, HTML pages, decompression bombs, oversized bodies) and added
latency per request. Tests run it in a thread; `python tests/image_server.py --scenes 512 --latency 0.05` runs it in
its own process (its CPU then is not the client's) and prints its address."""

from __future__ import annotations

import argparse
import asyncio
import io
import struct
import sys
import threading
import zlib
from collections import Counter
from pathlib import Path

from aiohttp import web

HTML = b"<!doctype html><html><head><title>Not Found</title></head><body>Moved to our new site!</body></html>"


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A 100-byte PNG declaring `width`×`height` pixels: decoding it would take gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def encode(image, image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return buffer.getvalue()


class ImageServer:
    """
    Serves `images` (name → file bytes) on 127.0.0.1 with these paths:

    - `/img/NAME`: the image, after `latency` seconds (every path waits that long first).
    - `/chunked/NAME`: the image without a Content-Length (chunked transfer).
    - `/status/CODE/NAME`: HTTP CODE (404, 500, 503, ...) with a short body.
    - `/flaky/N/NAME`: 503 for the first N requests to this path, then the image.
    - `/slow/SECONDS/NAME`: the image after SECONDS more (a timeout, for a client with a shorter one).
    - `/truncated/NAME`: announces the image's length but sends half of it and closes the connection.
    - `/html/NAME`: an HTML page with status 200.
    - `/bomb/NAME`: a small PNG declaring 30000×30000 pixels.
    - `/big/NAME`, `/chunked_big/NAME`: 3 MB of noise, with and without a Content-Length.

    `hits` counts requests per path.
    """

    def __init__(self, images: dict[str, bytes], latency: float = 0.0):
        self.images, self.latency = images, latency
        self.hits: Counter[str] = Counter()
        self.port: int | None = None
        app = web.Application()
        app.router.add_get("/{kind}/{name}", self.handle)
        app.router.add_get("/{kind}/{arg}/{name}", self.handle)
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, kind: str, name: str, arg: object | None = None) -> str:
        return f"{self.base_url}/{kind}/{name}" if arg is None else f"{self.base_url}/{kind}/{arg}/{name}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        kind, name, arg = request.match_info["kind"], request.match_info["name"], request.match_info.get("arg")
        self.hits[request.path] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        body = self.images.get(name)
        if body is None and kind not in ("status", "html", "bomb", "big", "chunked_big"):
            return web.Response(status=404, text=f"no image {name}")
        if kind == "img":
            return web.Response(body=body, content_type="image/jpeg")
        if kind == "chunked":
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(body)
            await response.write_eof()
            return response
        if kind == "status":
            return web.Response(status=int(arg), text=f"status {arg}")
        if kind == "flaky":
            if self.hits[request.path] <= int(arg):
                return web.Response(status=503, text="busy, try again")
            return web.Response(body=body, content_type="image/jpeg")
        if kind == "slow":
            await asyncio.sleep(float(arg))
            return web.Response(body=body, content_type="image/jpeg")
        if kind == "truncated":
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": str(len(body))})
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            request.transport.close()
            return response
        if kind == "html":
            return web.Response(body=HTML, content_type="text/html")
        if kind == "bomb":
            return web.Response(body=bomb_png(), content_type="image/png")
        if kind in ("big", "chunked_big"):
            noise = bytes(range(256)) * (3 * 4096)
            if kind == "big":
                return web.Response(body=noise, content_type="image/jpeg")
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(noise), 1 << 16):
                await response.write(noise[start : start + (1 << 16)])
            await response.write_eof()
            return response
        return web.Response(status=404, text=f"unknown path kind {kind}")

    async def _start(self, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def start(self, port: int = 0) -> ImageServer:
        """Serves from a background thread; returns once the port is open."""
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._start(port))
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def scene_images(count: int, size: int, seed: int = 0) -> tuple[dict[str, bytes], dict[str, list[str]]]:
    """Synthetic training scenes as JPEG files named `00000.jpg`, ..., and their captions."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from captioning.data.synthetic import build_synthetic_splits, render_scene

    examples = build_synthetic_splits(seed, (count, 1, 1))["train"]
    images, captions = {}, {}
    for index, example in enumerate(examples):
        name = f"{index:05d}.jpg"
        images[name] = encode(render_scene(example.scene, size))
        captions[name] = list(example.captions)
    return images, captions


# The faults a url–caption file meets on the web, as the kinds the downloader counts them under.
FAULTS = (
    "dns",
    "refused",
    "http_4xx",
    "http_5xx",
    "timeout",
    "truncated",
    "not_an_image",
    "decompression_bomb",
    "too_large",
)


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fault_url(server: ImageServer, kind: str, name: str, refused_port: int, slow_seconds: float = 3.0) -> str:
    """A URL that fails with `kind` (one of `FAULTS`) for a client whose timeout is under `slow_seconds`."""
    return {
        "dns": f"http://images.invalid/{name}",  # RFC 2606: .invalid never resolves
        "refused": f"http://127.0.0.1:{refused_port}/img/{name}",
        "http_4xx": server.url("status", name, 404),
        "http_5xx": server.url("status", name, 503),
        "timeout": server.url("slow", name, slow_seconds),
        "truncated": server.url("truncated", name),
        "not_an_image": server.url("html", name),
        "decompression_bomb": server.url("bomb", name),
        "too_large": server.url("big", name),
    }[kind]


def caption_rows(server: ImageServer, captions: dict[str, list[str]], faulty_every: int = 10) -> list[dict]:
    """One url–caption row per served image: every `faulty_every`-th row broken (the faults in turn, `"fault"`
    names the kind), every 7th of the others answered 503 once before the image (recovered by a retry)."""
    refused, rows = closed_port(), []
    for i, (name, texts) in enumerate(captions.items()):
        if faulty_every and i % faulty_every == faulty_every - 1:
            kind = FAULTS[(i // faulty_every) % len(FAULTS)]
            rows.append({"url": fault_url(server, kind, name, refused), "caption": texts[0], "fault": kind})
        else:
            url = server.url("flaky", name, 1) if i % 7 == 0 else server.url("img", name)
            rows.append({"url": url, "caption": texts[0], "fault": None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=512, help="Synthetic scenes served as /img/00000.jpg, ...")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.05, help="Seconds added to every request.")
    args = parser.parse_args()
    images, _ = scene_images(args.scenes, args.image_size)
    server = ImageServer(images, latency=args.latency)
    loop = asyncio.new_event_loop()
    server._loop = loop
    loop.run_until_complete(server._start(args.port))
    print(f"serving {len(images)} images on {server.base_url}", flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
