"""Images downloaded concurrently for web-scale training: aiohttp in one event-loop thread (hundreds of requests in
flight for little CPU), decoding and shrinking in a small thread pool, bounded retries with backoff, byte and pixel
caps, failures classified by kind, and an optional on-disk cache."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import queue
import random
import socket
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import PIL.Image

from captioning.data.images import is_url
from modeling_captioner import load_image

# Every way a row can fail, in the order reports list them.
FAILURE_KINDS = (
    "invalid_url",  # not an http(s) address
    "dns",  # the host name does not resolve
    "refused",  # nothing listens on the port
    "connection",  # reset, dropped or otherwise broken connections (also redirect loops)
    "timeout",  # no complete answer within the timeout
    "http_4xx",
    "http_5xx",
    "truncated",  # the connection closed before the announced Content-Length arrived
    "too_large",  # a body over max_bytes
    "not_an_image",  # a body PIL cannot identify (an HTML error page, say)
    "corrupt_image",  # identified, but its pixels do not decode
    "decompression_bomb",  # more pixels than max_pixels, refused before decoding
    "no_caption",  # a webdataset sample without caption text
)
# Worth another try: the server or the network may answer next time. (408 and 429 are retried as well.)
TRANSIENT_KINDS = frozenset({"connection", "timeout", "http_5xx", "truncated"})
_RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Failures that will not change by the next epoch: the cache remembers them so they are not fetched again.
PERMANENT_KINDS = frozenset(
    {"invalid_url", "http_4xx", "too_large", "not_an_image", "corrupt_image", "decompression_bomb"}
)
_EXAMPLES_KEPT = 3


class DownloadFailed(Exception):
    """Why one URL gave no image: `kind` (one of `FAILURE_KINDS`) and a sentence naming the URL."""

    def __init__(self, kind: str, message: str, status: int | None = None):
        super().__init__(message)
        self.kind, self.status = kind, status


@dataclass(frozen=True)
class DownloadOptions:
    """
    How images are fetched and prepared.

    Args:
        concurrency (`int`, *optional*, defaults to 128): requests in flight at once (per DataLoader worker). At 50 ms
            per image, 128 in flight allow ~2500 images/s.
        timeout (`float`, *optional*, defaults to 10.0): seconds for one attempt, connection and body included.
        retries (`int`, *optional*, defaults to 2): further attempts after a transient failure (timeout, connection
            error, truncated body, HTTP 408/429/500/502/503/504).
        backoff (`float`, *optional*, defaults to 0.5): seconds before the first retry; doubled for each next one,
            with ±50% jitter so that retries of one failing host do not arrive together.
        max_bytes (`int`, *optional*, defaults to 20 000 000): a longer body is refused (`too_large`), not read on.
        max_pixels (`int`, *optional*, defaults to 40 000 000): an image declaring more pixels is refused before its
            pixels are decoded (`decompression_bomb`).
        image_side (`int`, *optional*): shrink images (aspect kept, never enlarged) until their shorter side is this
            many pixels, right after decoding: JPEGs are decoded at a reduced scale where possible (PIL's draft
            mode), the cheapest way to a small image. `None` keeps full size.
        decode_threads (`int`, *optional*, defaults to 2): threads decoding and shrinking (Pillow releases the GIL).
        window (`int`, *optional*): rows started but not yet taken by the consumer (in flight, decoding or
            waiting); bounds memory. Defaults to 4 × `concurrency`.
        ordered (`bool`, *optional*, defaults to `False`): hand results over in row order (reproducible batches, but
            one slow row holds up the rows behind it); `False` hands them over as they complete.
        cache_dir (`str`, *optional*): keep prepared images (and permanent failures) here for the next epoch or run.
        user_agent (`str`, *optional*, defaults to `"captioner"`).
    """

    concurrency: int = 128
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.5
    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    image_side: int | None = None
    decode_threads: int = 2
    window: int | None = None
    ordered: bool = False
    cache_dir: str | None = None
    user_agent: str = "captioner"

    def __post_init__(self):
        for name in ("concurrency", "max_bytes", "max_pixels", "decode_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"Download option {name}={getattr(self, name)} must be at least 1.")
        for name, value in (("timeout", self.timeout), ("image_side", self.image_side), ("window", self.window)):
            if value is not None and value <= 0:
                raise ValueError(f"Download option {name}={value} must be positive.")
        if self.retries < 0 or self.backoff < 0:
            raise ValueError(f"Download options retries={self.retries} and backoff={self.backoff} cannot be negative.")

    @property
    def rows_ahead(self) -> int:
        return self.window or 4 * self.concurrency


@dataclass
class Downloaded:
    """
    What became of one row: an `image` or a `failure` kind.

    Args:
        key: the caller's key for the row (handed back untouched).
        url (`str`): the address.
        image (`PIL.Image.Image`, *optional*): the upright RGB image, shrunk to `image_side`.
        failure (`str`, *optional*): one of `FAILURE_KINDS`; `message` says more.
        num_bytes (`int`): bytes received for the image (0 when it came from the cache or failed).
        attempts (`int`): requests made (0 for a cache hit).
        cached (`bool`): the image (or its permanent failure) came from the on-disk cache.
        data (`bytes`, *optional*): the image file as kept (the body, or the shrunk image re-encoded): with
            `keep_data=True`, for writers of shards and in-memory evaluation splits.
    """

    key: Any
    url: str
    image: PIL.Image.Image | None = None
    failure: str | None = None
    message: str = ""
    num_bytes: int = 0
    attempts: int = 0
    cached: bool = False
    data: bytes | None = None


@dataclass
class DownloadStats:
    """Counts of one or many downloads: images, failures by kind (with a few example messages), bytes, retries."""

    ok: int = 0
    cached: int = 0
    retries: int = 0
    num_bytes: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict, compare=False, repr=False)

    def add(self, result: Downloaded) -> None:
        self.add_counts(
            ok=int(result.image is not None),
            cached=int(result.cached),
            retries=max(0, result.attempts - 1),
            num_bytes=result.num_bytes,
            failure=result.failure,
            message=result.message,
        )

    def add_counts(
        self, ok: int = 0, cached: int = 0, retries: int = 0, num_bytes: int = 0, failure=None, message: str = ""
    ) -> None:
        self.ok, self.cached, self.retries = self.ok + ok, self.cached + cached, self.retries + retries
        self.num_bytes += num_bytes
        if failure is not None:
            self.failures[failure] = self.failures.get(failure, 0) + 1
            if message and len(self.examples.setdefault(failure, [])) < _EXAMPLES_KEPT:
                self.examples[failure].append(message)

    def __add__(self, other: DownloadStats) -> DownloadStats:
        merged = DownloadStats()
        for stats in (self, other):
            merged.ok, merged.cached = merged.ok + stats.ok, merged.cached + stats.cached
            merged.retries, merged.num_bytes = merged.retries + stats.retries, merged.num_bytes + stats.num_bytes
            for kind, count in stats.failures.items():
                merged.failures[kind] = merged.failures.get(kind, 0) + count
            for kind, messages in stats.examples.items():
                kept = merged.examples.setdefault(kind, [])
                kept.extend(messages[: _EXAMPLES_KEPT - len(kept)])
        return merged

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def attempted(self) -> int:
        return self.ok + self.failed

    @property
    def success_rate(self) -> float:
        return self.ok / self.attempted if self.attempted else 1.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, the success rate and the failures by kind (every kind listed, zeros included)."""
        scalars = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("failures", "examples")}
        failures = {kind: self.failures.get(kind, 0) for kind in FAILURE_KINDS}
        return {**scalars, "failed": self.failed, "success_rate": round(self.success_rate, 6), "failures": failures}

    def report(self) -> str:
        """One line, e.g. `270/300 images (90.0%), 2.1 MB, 4 retries; failed: 20 http_4xx (e.g. ...), 10 timeout`."""
        line = (
            f"{self.ok}/{self.attempted} images ({100 * self.success_rate:.1f}%), {self.num_bytes / 1e6:.1f} MB "
            f"downloaded, {self.cached} from the cache, {self.retries} retries"
        )
        parts = []
        for kind in FAILURE_KINDS:
            if self.failures.get(kind):
                examples = self.examples.get(kind)
                parts.append(f"{self.failures[kind]} {kind}" + (f" (e.g. {examples[0]})" if examples else ""))
        return line + ("; failed: " + ", ".join(parts) if parts else "; no failures")


# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------


def shrunk_size(size: tuple[int, int], side: int | None) -> tuple[int, int]:
    """The (width, height) whose shorter side is `side`, aspect kept; `size` itself when it is no larger."""
    width, height = size
    shorter = min(width, height)
    if side is None or shorter <= side:
        return size
    return max(1, round(width * side / shorter)), max(1, round(height * side / shorter))


def decode_image(body: bytes, where: str, max_pixels: int = 40_000_000, side: int | None = None) -> PIL.Image.Image:
    """
    Bytes of an image file as an upright RGB image whose shorter side is at most `side`.

    The declared size is checked against `max_pixels` before any pixel is decoded, so a small file declaring a
    huge image (a decompression bomb) costs nothing. Raises `DownloadFailed` (`not_an_image`, `corrupt_image` or
    `decompression_bomb`) with a message naming `where`.
    """
    try:
        image = PIL.Image.open(io.BytesIO(body))
    except PIL.Image.DecompressionBombError as error:
        raise DownloadFailed("decompression_bomb", f"{where}: {error}") from error
    except Exception as error:  # PIL raises several types for what is not an image file
        start = body[:40].decode("utf-8", "replace").strip()
        raise DownloadFailed(
            "not_an_image", f"{where}: not an image ({len(body)} bytes, starting {start!r})"
        ) from error
    width, height = image.size
    if width * height > max_pixels:
        raise DownloadFailed(
            "decompression_bomb", f"{where}: declares {width}×{height} pixels, more than max_pixels={max_pixels}"
        )
    target = shrunk_size(image.size, side)
    try:
        if target != image.size and image.format == "JPEG":
            # Decoding at 1/2, 1/4 or 1/8 scale (never below the target) skips most of the decoder's work.
            image.draft("RGB", target)
        image.load()
        image = load_image(image, where=where)
    except Exception as error:  # truncated or damaged pixel data, in any of PIL's exception types
        raise DownloadFailed("corrupt_image", f"{where}: the image does not decode ({error})") from error
    target = shrunk_size(image.size, side)  # the draft and the EXIF turn may have changed the size
    if target != image.size:
        image = image.resize(target, PIL.Image.Resampling.BICUBIC)
    return image


def encode_image(image: PIL.Image.Image, like_format: str | None, lossless: bool = False) -> bytes:
    """A prepared image as a file: JPEG (quality 95) for JPEG sources, else (or when `lossless`) PNG."""
    buffer = io.BytesIO()
    if like_format == "JPEG" and not lossless:
        image.save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def prepare_image(
    body: bytes, where: str, max_pixels: int, side: int | None, keep: str | None = None
) -> tuple[PIL.Image.Image, bytes | None]:
    """
    `decode_image`, and with `keep` the file to keep: the body itself where the image was not shrunk, else the shrunk
    image re-encoded, `keep="compact"` as JPEG for JPEG sources (shards, evaluation splits in memory) or
    `keep="lossless"` as PNG (the cache: a cached epoch sees the very pixels of the first).
    """
    image = decode_image(body, where, max_pixels, side)
    if keep is None:
        return image, None
    with PIL.Image.open(io.BytesIO(body)) as original:
        unchanged = original.size == image.size and original.format in ("JPEG", "PNG", "WEBP")
        like = original.format
    return image, body if unchanged else encode_image(image, like, lossless=keep == "lossless")


# ---------------------------------------------------------------------------------------------------------------
# The on-disk cache
# ---------------------------------------------------------------------------------------------------------------


class DownloadCache:
    """
    Prepared images and permanent failures kept on disk, one file per URL (named by its SHA-1), in a folder per
    `image_side` (an image shrunk for one model size does not serve another). Writes are atomic, so processes and
    DataLoader workers can share the folder.
    """

    def __init__(self, root: str | os.PathLike, image_side: int | None):
        self.root = Path(root) / (f"side-{image_side}" if image_side else "full-size")

    def _path(self, url: str) -> Path:
        digest = hashlib.sha1(url.encode("utf-8", "surrogatepass")).hexdigest()
        return self.root / digest[:2] / digest

    def load(self, url: str) -> bytes | str | None:
        """The image file kept for `url`, the kind of its permanent failure (a `str`), or `None` if nothing is kept."""
        path = self._path(url)
        try:
            return path.with_suffix(".img").read_bytes()
        except FileNotFoundError:
            pass
        try:
            return path.with_suffix(".failed").read_text().strip()
        except FileNotFoundError:
            return None

    def store(self, url: str, data: bytes | str) -> None:
        """Keep an image file (`bytes`) or a permanent failure kind (`str`)."""
        path = self._path(url).with_suffix(".img" if isinstance(data, bytes) else ".failed")
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        temporary.write_bytes(data if isinstance(data, bytes) else data.encode())
        os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------------------------
# The downloader
# ---------------------------------------------------------------------------------------------------------------


def import_aiohttp():
    try:
        import aiohttp
    except ImportError as error:
        raise ImportError(
            "Downloading images needs aiohttp: pip install 'captioner[web]' (or pip install aiohttp)."
        ) from error
    return aiohttp


_DONE = object()


class Downloader:
    """
    Downloads and prepares the images of many rows concurrently, handing results back as an iterator.

    One background thread runs an asyncio event loop with an aiohttp session (up to `concurrency` requests in flight;
    measured cheaper per request than a thread per request, see BENCHMARKS.md); a thread pool decodes and shrinks
    the bodies. At most `window` rows are under way beyond what the consumer has taken, so a slow consumer holds the
    downloads back instead of filling memory. Every row gives exactly one `Downloaded`, an image or a failure;
    nothing is raised for a bad row.

    Args:
        options (`DownloadOptions`): concurrency, timeouts, retries, caps, image size, cache.
        keep_data (`bool`, *optional*, defaults to `False`): also return each image's file bytes (`Downloaded.data`).
    """

    def __init__(self, options: DownloadOptions | None = None, keep_data: bool = False):
        self.options = options or DownloadOptions()
        self.keep_data = keep_data
        self.cache = DownloadCache(self.options.cache_dir, self.options.image_side) if self.options.cache_dir else None
        import_aiohttp()

    def download(self, rows: Iterable[tuple[Any, str]]) -> Iterator[Downloaded]:
        """
        One `Downloaded` per `(key, url)` row: in row order with `ordered`, else as they complete. The rows iterable
        is read lazily, from the downloader's thread. Closing the iterator early cancels what is under way.
        """
        run = _Run(self, iter(rows))
        run.thread.start()
        try:
            yield from run.results()
        finally:
            run.stop()


class _Run:
    """One `Downloader.download` call: its event loop thread, decode pool, window and hand-over queue."""

    def __init__(self, downloader: Downloader, rows: Iterator[tuple[Any, str]]):
        self.options, self.cache, self.keep_data = downloader.options, downloader.cache, downloader.keep_data
        self.rows = rows
        self.results_queue: queue.SimpleQueue = queue.SimpleQueue()
        self.loop = asyncio.new_event_loop()
        self.window: asyncio.Semaphore | None = None
        self.pool = ThreadPoolExecutor(self.options.decode_threads, thread_name_prefix="captioner-decode")
        self.decoding: set = set()
        self.thread = threading.Thread(target=self._main, name="captioner-download", daemon=True)
        self.stopping = False
        self.random = random.Random(0)

    # -- the consumer's side ------------------------------------------------------------------------------------
    def results(self) -> Iterator[Downloaded]:
        waiting: dict[int, Downloaded] = {}
        next_position, unreleased = 0, 0
        while True:
            try:
                item = self.results_queue.get_nowait()
            except queue.Empty:
                # Window slots go back in bunches (each hand-over wakes the event loop), and always before waiting.
                unreleased = self._release(unreleased)
                item = self.results_queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            position, result = item
            if self.options.ordered:
                waiting[position] = result
                ready = []
                while next_position in waiting:
                    ready.append(waiting.pop(next_position))
                    next_position += 1
            else:
                ready = [result]
            for result in ready:
                yield result
                unreleased += 1
                if unreleased >= 32:
                    unreleased = self._release(unreleased)

    def _release(self, count: int) -> int:
        if count and not self.stopping:
            # A RuntimeError: the loop has finished, and every row is under way already.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._release_in_loop, count)
        return 0

    def _release_in_loop(self, count: int) -> None:
        for _ in range(count):
            self.window.release()

    def stop(self) -> None:
        self.stopping = True
        if self.thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._cancel_all)
            self.thread.join(timeout=30)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _cancel_all(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            task.cancel()

    # -- the loop's side ----------------------------------------------------------------------------------------
    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._produce())
        except asyncio.CancelledError:
            pass
        except BaseException as error:  # a bug here must reach the consumer, not hang it
            self.results_queue.put(error)
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            self.results_queue.put(_DONE)

    async def _produce(self) -> None:
        aiohttp = import_aiohttp()
        options = self.options
        self.window = asyncio.Semaphore(options.rows_ahead)
        in_flight = asyncio.Semaphore(options.concurrency)
        connector = aiohttp.TCPConnector(limit=options.concurrency, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=options.timeout)
        headers = {"User-Agent": options.user_agent, "Accept": "image/*,*/*;q=0.5"}
        tasks: set[asyncio.Task] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
            for position, (key, url) in enumerate(self.rows):
                await self.window.acquire()
                task = asyncio.create_task(self._one(session, in_flight, position, Downloaded(key=key, url=url)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        # Bodies still being decoded hand their results over themselves; _DONE must come after them.
        await asyncio.gather(*(asyncio.wrap_future(future) for future in list(self.decoding)))

    async def _one(self, session, in_flight: asyncio.Semaphore, position: int, result: Downloaded) -> None:
        url, kept = result.url, None
        try:
            if not is_url(url):
                raise DownloadFailed("invalid_url", f"{url!r}: not an http(s) URL")
            # Read in the loop's thread: a small local file, cheaper than a trip through the pool.
            kept = self.cache.load(url) if self.cache is not None else None
            if isinstance(kept, str):
                raise DownloadFailed(kept, f"{url}: {kept} (remembered by the download cache)")
            if kept is None:
                body = await self._fetch_with_retries(session, in_flight, result)
        except DownloadFailed as failure:
            result.failure, result.message, result.cached = failure.kind, str(failure), isinstance(kept, str)
            if self.cache is not None and not result.cached and failure.kind in PERMANENT_KINDS:
                self.cache.store(url, failure.kind)
            self.results_queue.put((position, result))
            return
        result.cached = kept is not None
        # Decoded in the pool, which hands the result over itself: no second wake-up of this loop per image.
        future = self.pool.submit(self._prepare, position, result, kept if result.cached else body)
        self.decoding.add(future)
        future.add_done_callback(self.decoding.discard)

    async def _fetch_with_retries(self, session, in_flight: asyncio.Semaphore, result: Downloaded) -> bytes:
        options = self.options
        for attempt in range(options.retries + 1):
            result.attempts = attempt + 1
            try:
                async with in_flight:
                    body = await self._fetch(session, result.url)
                result.num_bytes = len(body)
                return body
            except DownloadFailed as failure:
                transient = failure.kind in TRANSIENT_KINDS or failure.status in _RETRIED_STATUSES
                if not transient or attempt == options.retries:
                    raise
            await asyncio.sleep(options.backoff * 2**attempt * (0.5 + self.random.random()))
        raise AssertionError("unreachable")

    def _prepare(self, position: int, result: Downloaded, body: bytes) -> None:
        """In a pool thread: decode and shrink, keep in the cache, hand over."""
        options = self.options
        try:
            keep = "lossless" if self.cache is not None else "compact" if self.keep_data else None
            result.image, result.data = prepare_image(body, result.url, options.max_pixels, options.image_side, keep)
            if self.cache is not None and not result.cached:
                self.cache.store(result.url, result.data)
        except DownloadFailed as failure:
            result.failure, result.message = failure.kind, str(failure)
            if self.cache is not None and not result.cached:
                self.cache.store(result.url, failure.kind)
        except BaseException as error:  # a bug must reach the consumer, not vanish in the pool
            self.results_queue.put(error)
            return
        self.results_queue.put((position, result))

    async def _fetch(self, session, url: str) -> bytes:
        aiohttp = import_aiohttp()
        max_bytes = self.options.max_bytes
        try:
            async with session.get(url, max_redirects=5) as response:
                if response.status >= 400:
                    kind = "http_5xx" if response.status >= 500 else "http_4xx"
                    raise DownloadFailed(kind, f"{url}: HTTP {response.status} {response.reason}", response.status)
                length = response.content_length
                if length is not None and length > max_bytes:
                    raise DownloadFailed("too_large", f"{url}: the body is {length} bytes, more than {max_bytes}")
                if length is not None:
                    return await response.read()
                body = bytearray()
                async for chunk in response.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > max_bytes:
                        raise DownloadFailed("too_large", f"{url}: the body is more than {max_bytes} bytes")
                return bytes(body)
        except DownloadFailed:
            raise
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as error:
            raise DownloadFailed("timeout", f"{url}: no complete answer within {self.options.timeout:g} s") from error
        except aiohttp.ClientConnectorError as error:
            if isinstance(error.os_error, socket.gaierror):
                raise DownloadFailed("dns", f"{url}: the host name does not resolve ({error.os_error})") from error
            kind = "refused" if isinstance(error.os_error, ConnectionRefusedError) else "connection"
            raise DownloadFailed(kind, f"{url}: cannot connect ({error.os_error})") from error
        except aiohttp.ClientPayloadError as error:
            raise DownloadFailed("truncated", f"{url}: the body ended early ({error})") from error
        except (aiohttp.InvalidURL, ValueError) as error:
            raise DownloadFailed("invalid_url", f"{url!r}: not a valid URL ({error})") from error
        except (aiohttp.ClientError, OSError) as error:
            raise DownloadFailed(
                "connection", f"{url}: the download failed ({type(error).__name__}: {error})"
            ) from error


def add_download_arguments(parser) -> None:
    """The download flags (an argparse parser or group) that `download_options` reads."""
    parser.add_argument(
        "--download_concurrency", type=int, default=128, help="Requests in flight per process or DataLoader worker."
    )
    parser.add_argument("--download_timeout", type=float, default=10.0, help="Seconds per attempt.")
    parser.add_argument("--download_retries", type=int, default=2, help="Retries after a transient failure.")
    parser.add_argument("--download_backoff", type=float, default=0.5, help="Seconds before the first retry.")
    parser.add_argument("--max_image_bytes", type=int, default=20_000_000, help="Larger bodies are refused.")
    parser.add_argument("--max_image_pixels", type=int, default=40_000_000, help="Larger images are not decoded.")
    parser.add_argument(
        "--max_image_side",
        type=int,
        default=None,
        help="Shrink each image right after decoding until its shorter side is this many pixels (default for "
        "training: the model's input size).",
    )
    parser.add_argument("--decode_threads", type=int, default=2, help="Threads decoding images, per downloader.")
    parser.add_argument("--download_window", type=int, default=None, help="Rows under way at once (4×concurrency).")
    parser.add_argument(
        "--download_order",
        default="completion",
        choices=["completion", "row"],
        help="'row': images in row order (reproducible batches; a slow row holds up the rows behind it).",
    )
    parser.add_argument("--download_cache_dir", default=None, help="Keep prepared images here for the next epoch.")


def download_options(args, image_side: int | None = None) -> DownloadOptions:
    """`DownloadOptions` from the flags of `add_download_arguments`; `image_side` stands in for --max_image_side."""
    try:
        return DownloadOptions(
            concurrency=args.download_concurrency,
            timeout=args.download_timeout,
            retries=args.download_retries,
            backoff=args.download_backoff,
            max_bytes=args.max_image_bytes,
            max_pixels=args.max_image_pixels,
            image_side=args.max_image_side or image_side,
            decode_threads=args.decode_threads,
            window=args.download_window,
            ordered=args.download_order == "row",
            cache_dir=args.download_cache_dir,
        )
    except ValueError as error:
        raise SystemExit(f"{error} (see the --download_* and --max_image_* flags)") from error


__all__ = [
    "FAILURE_KINDS",
    "PERMANENT_KINDS",
    "TRANSIENT_KINDS",
    "DownloadCache",
    "DownloadFailed",
    "DownloadOptions",
    "DownloadStats",
    "Downloaded",
    "Downloader",
    "add_download_arguments",
    "decode_image",
    "download_options",
    "encode_image",
    "prepare_image",
    "shrunk_size",
]
