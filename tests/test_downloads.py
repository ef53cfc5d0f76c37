"""The downloader against a real HTTP server on 127.0.0.1: every fault is skipped and counted by its kind, transient
ones retried with backoff and permanent ones not, byte and pixel caps hold, slow answers time out, the window keeps
downloads from running ahead of the consumer, concurrency hides latency, and the on-disk cache serves the next
epoch."""

import time

import pytest
from image_server import FAULTS, ImageServer, bomb_png, closed_port, fault_url, scene_images

from captioning.data.web.downloads import (
    FAILURE_KINDS,
    DownloadCache,
    Downloader,
    DownloadFailed,
    DownloadOptions,
    DownloadStats,
    decode_image,
)

FAST = {"timeout": 0.5, "retries": 2, "backoff": 0.01, "max_bytes": 1_000_000}


@pytest.fixture(scope="module")
def server():
    images, _ = scene_images(16, 96)
    with ImageServer(images) as running:
        yield running


def fault_urls(server: ImageServer) -> dict[str, str]:
    """One URL per failure kind (the kind it must be counted as)."""
    refused = closed_port()
    urls = {kind: fault_url(server, kind, f"{8 + i:05d}.jpg", refused) for i, kind in enumerate(FAULTS)}
    return {**urls, "invalid_url": "ftp://example.invalid/cat.jpg"}


def download(urls, **options) -> dict:
    return {result.key: result for result in Downloader(DownloadOptions(**{**FAST, **options})).download(urls)}


def test_every_fault_is_skipped_and_counted_by_kind(server):
    faults = fault_urls(server)
    good = [server.url("img", f"{i:05d}.jpg") for i in range(4)] + [server.url("chunked", "00004.jpg")]
    rows = [(kind, url) for kind, url in faults.items()] + [(f"good-{i}", url) for i, url in enumerate(good)]
    started = time.perf_counter()
    results = download(rows, image_side=32)
    assert time.perf_counter() - started < 8  # the slow answer is cut at 0.5 s per attempt; DNS fails fast offline
    stats = DownloadStats()
    for result in results.values():
        stats.add(result)
    for kind in faults:
        assert results[kind].failure == kind, (kind, results[kind].message)
        assert (results[kind].image is None and kind in results[kind].message) or results[kind].url in results[
            kind
        ].message
    assert stats.ok == len(good) and stats.failed == len(faults)
    assert stats.as_dict()["failures"] == {kind: int(kind in faults) for kind in FAILURE_KINDS}
    for i in range(len(good)):
        image = results[f"good-{i}"].image
        assert image.mode == "RGB" and min(image.size) == 32  # shrunk right after decoding
    assert "1 timeout" in stats.report() and f"{len(good)}/{len(rows)} images" in stats.report()


def test_transient_failures_are_retried_with_backoff_and_permanent_ones_are_not(server):
    rows = [
        ("flaky", server.url("flaky", "00002.jpg", 2)),  # 503, 503, then the image
        ("unavailable", server.url("status", "00003.jpg", 503)),
        ("missing", server.url("status", "00003.jpg", 404)),
        ("truncated", server.url("truncated", "00005.jpg")),
    ]
    started = time.perf_counter()
    results = download(rows, retries=2, backoff=0.2)
    # Two waits of 0.2 × 2**attempt × (0.5..1.5): at least 0.1 + 0.2 seconds.
    assert time.perf_counter() - started >= 0.3
    assert results["flaky"].image is not None and results["flaky"].attempts == 3
    assert results["unavailable"].failure == "http_5xx" and results["unavailable"].attempts == 3
    assert results["missing"].failure == "http_4xx" and results["missing"].attempts == 1
    assert results["truncated"].failure == "truncated" and results["truncated"].attempts == 3
    assert server.hits["/status/503/00003.jpg"] == 3 and server.hits["/status/404/00003.jpg"] == 1


def test_byte_and_pixel_caps(server):
    results = download(
        [("announced", server.url("big", "a.jpg")), ("chunked", server.url("chunked_big", "b.jpg"))], max_bytes=100_000
    )
    assert results["announced"].failure == results["chunked"].failure == "too_large"
    # A modest image over a small pixel cap is refused from its header, before decoding.
    results = download([("ok", server.url("img", "00000.jpg"))], max_pixels=1000)
    assert results["ok"].failure == "decompression_bomb" and "max_pixels=1000" in results["ok"].message
    with pytest.raises(DownloadFailed, match=r"decompression bomb|exceeds limit") as caught:
        decode_image(bomb_png(), "bomb.png")
    assert caught.value.kind == "decompression_bomb"


def test_concurrency_hides_latency_and_the_window_bounds_what_runs_ahead(server):
    server.latency = 0.05
    try:
        rows = [(i, server.url("img", f"{i % 16:05d}.jpg")) for i in range(200)]
        started = time.perf_counter()
        results = download(rows, concurrency=64)
        # One at a time would take 200 × 50 ms = 10 s.
        assert len(results) == 200 and all(r.image is not None for r in results.values())
        assert time.perf_counter() - started < 4

        server.hits.clear()
        iterator = Downloader(DownloadOptions(**FAST, concurrency=8, window=10)).download(rows)
        first = [next(iterator) for _ in range(3)]
        time.sleep(0.5)  # time for 80 requests, were nothing holding them back
        assert sum(server.hits.values()) <= 3 + 10
        iterator.close()  # cancels what is under way
        assert len(first) == 3
    finally:
        server.latency = 0.0


def test_row_order_is_kept_when_asked(server):
    rows = [
        (i, server.url("slow", f"{i:05d}.jpg", 0.2) if i == 0 else server.url("img", f"{i:05d}.jpg")) for i in range(8)
    ]
    ordered = [r.key for r in Downloader(DownloadOptions(**FAST, ordered=True)).download(rows)]
    assert ordered == list(range(8))
    as_completed = [r.key for r in Downloader(DownloadOptions(**FAST)).download(rows)]
    assert sorted(as_completed) == list(range(8)) and as_completed[-1] == 0  # the slow first row comes last


def test_the_cache_serves_the_next_epoch_and_remembers_permanent_failures(server, tmp_path):
    rows = [
        ("good", server.url("img", "00006.jpg")),
        ("gone", server.url("status", "00006.jpg", 404)),
        ("busy", server.url("status", "00006.jpg", 503)),
    ]
    options = {"cache_dir": str(tmp_path), "image_side": 48, "retries": 0}
    first = download(rows, **options)
    server.hits.clear()
    second = download(rows, **options)
    assert server.hits == {"/status/503/00006.jpg": 1}  # only the transient failure is asked again
    assert second["good"].cached and second["good"].attempts == 0 and second["good"].num_bytes == 0
    assert second["good"].image.tobytes() == first["good"].image.tobytes()
    assert second["gone"].failure == "http_4xx" and second["gone"].cached
    assert second["busy"].failure == "http_5xx" and not second["busy"].cached
    # Another image size does not reuse images shrunk for this one.
    assert DownloadCache(tmp_path, 64).load(server.url("img", "00006.jpg")) is None
