"""Streaming benchmark on CPU, side by side in one run: the default model's training throughput; the images/s the url
source sustains from a loopback server that adds 50 ms to every image (aiohttp in one event-loop thread against a
thread per request; the training stream through DataLoader workers); and the share of time train.py, fed by the
source, waits for data.

    python bench/bench_streaming.py [--images 2048] [--rows 8192] [--latency 0.05] [--repeats 3]

The image server (tests/image_server.py: synthetic scenes as 256×256 JPEGs) runs in its own process, so its CPU is
not counted against the client's. Images are shrunk to the model's 64 pixels right after decoding. The url file
repeats the served images under distinct URLs (`?copy=N`) to make epochs of --rows downloads."""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_server(scenes: int, latency: float) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, str(ROOT / "tests" / "image_server.py"), "--scenes", str(scenes)]
    command += ["--latency", str(latency), "--image_size", "256"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = server.stdout.readline()
    if "serving" not in line:
        server.kill()
        raise SystemExit(f"the image server did not start: {line!r}")
    return server, line.split()[-1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(run, server_pid: int) -> dict:
    """Wall time, this process's CPU and the server's CPU of `run()`, which returns the images it got."""
    wall, cpu, server_cpu = time.perf_counter(), time.process_time(), cpu_seconds(server_pid)
    images = run()
    wall = time.perf_counter() - wall
    return {
        "images": images,
        "images_per_second": images / wall,
        "client_cpu_ms_per_image": 1000 * (time.process_time() - cpu) / max(images, 1),
        "server_cpu_ms_per_image": 1000 * (cpu_seconds(server_pid) - server_cpu) / max(images, 1),
    }


def aiohttp_source(urls: list[str], concurrency: int, side: int) -> int:
    from captioning.data.web.downloads import Downloader, DownloadOptions

    options = DownloadOptions(concurrency=concurrency, image_side=side)
    return sum(result.image is not None for result in Downloader(options).download(enumerate(urls)))


def threaded_source(urls: list[str], threads: int, side: int) -> int:
    """The same work with a thread per request in flight: image_sources.fetch_url (urllib), then decode_image."""
    from captioning.data.images import fetch_url
    from captioning.data.web.downloads import decode_image

    def one(url: str):
        return decode_image(fetch_url(url)[0], url, side=side)

    with ThreadPoolExecutor(threads) as pool:
        return sum(image is not None for image in pool.map(one, urls))


def stream_source(rows_file: str, num_workers: int, concurrency: int, epochs: int) -> list[dict]:
    """The training stream as train.py builds it (downloads, decoding, collation into model inputs), read through a
    DataLoader with `num_workers` and no model: images/s per epoch, and the wait for the first batch."""
    from torch.utils.data import DataLoader

    from captioning.data.web.downloads import DownloadOptions
    from captioning.data.web.streams import StreamCollator
    from captioning.data.web.url_rows import UrlCaptionStream, read_url_rows
    from captioning.training.collator import CaptionCollator
    from modeling_captioner import CaptionerConfig, CaptionerProcessor, build_image_processor
    from tokenization import build_tokenizer

    rows = read_url_rows(rows_file)
    tokenizer = build_tokenizer([c for captions in rows.captions for c in captions], vocab_size=1000)
    config = CaptionerConfig.from_preset("small", tokenizer=tokenizer)
    processor = CaptionerProcessor(build_image_processor(config), tokenizer)
    options = DownloadOptions(concurrency=concurrency, image_side=config.image_size)
    stream = UrlCaptionStream(rows, options, num_workers=num_workers)
    collator = StreamCollator(CaptionCollator(processor, max_length=config.max_position_embeddings))
    loader = DataLoader(stream, batch_size=32, collate_fn=collator, num_workers=num_workers)
    runs = []
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        started, first, images = time.perf_counter(), None, 0
        for batch in loader:
            first = time.perf_counter() - started if first is None else first
            images += batch["stream"]["ok"]
        seconds = time.perf_counter() - started
        runs.append({"images": images, "images_per_second": images / seconds, "first_batch_seconds": first})
    return runs


def train_py_run(rows_file: str, workdir: str, num_workers: int, epochs: int) -> list[dict]:
    """train.py itself (the default model) on the url rows: its per-epoch data reports from metrics.json."""
    output = Path(workdir) / f"train-py-{num_workers}"
    command = [sys.executable, str(ROOT / "train.py"), "--dataset_format", "urls", "--data_files", rows_file]
    command += ["--num_workers", str(num_workers), "--num_train_epochs", str(epochs), "--output_dir", str(output)]
    command += ["--no-with_tracking", "--no_meteor", "--num_beams", "2", "--max_eval_samples", "64"]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if completed.returncode:
        raise SystemExit(f"train.py failed:\n{completed.stderr[-3000:]}")
    return json.loads((output / "metrics.json").read_text())["downloads"]["epochs"]


def training_throughput(repeats: int) -> dict:
    """bench_train.py's measurement of the default model (all parts training, in-memory synthetic images)."""
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, str(ROOT / "bench" / "bench_train.py"), "--child", "small", "train", "512", "32"]
        completed = subprocess.run([*command, str(repeats), workdir], capture_output=True, text=True, cwd=ROOT)
    if completed.returncode:
        raise SystemExit(f"bench_train.py failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def spread(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} (range {min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2048, help="Distinct images served.")
    parser.add_argument("--rows", type=int, default=8192, help="Rows of the url file (an epoch's downloads).")
    parser.add_argument("--latency", type=float, default=0.05, help="Seconds the server adds to every image.")
    parser.add_argument("--concurrency", type=int, default=128, help="Requests in flight (and threads to compare).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="Epochs of each train.py run.")
    parser.add_argument("--json", default=None, help="Also write the raw results here.")
    args = parser.parse_args()

    import pyarrow
    import pyarrow.parquet
    import torch

    from captioning.data.synthetic import build_synthetic_splits

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, python {platform.python_version()}; {args.images} images of 256×256 "
        f"served with {1000 * args.latency:.0f} ms latency"
    )
    results = {"training": training_throughput(args.repeats)}
    train_rate = statistics.median(results["training"]["images_per_second"])
    print(f"default model training (in-memory images): {spread(results['training']['images_per_second'], 1)} img/s")

    server, base = start_server(args.images, args.latency)
    try:
        urls = [f"{base}/img/{i:05d}.jpg" for i in range(args.images)]
        aiohttp_source(urls[:256], args.concurrency, 64)  # warm-up: imports, the server's first connections
        for name, source in (("aiohttp", aiohttp_source), ("threads", threaded_source)):
            runs = [timed(lambda s=source: s(urls, args.concurrency, 64), server.pid) for _ in range(args.repeats)]
            results[name] = runs
            rates = [run["images_per_second"] for run in runs]
            print(
                f"downloader alone, {name} ({args.concurrency} in flight, one process): {spread(rates)} img/s = "
                f"{statistics.median(rates) / train_rate:.2f}× training; CPU per image: client "
                f"{statistics.median(r['client_cpu_ms_per_image'] for r in runs):.3f} ms, server "
                f"{statistics.median(r['server_cpu_ms_per_image'] for r in runs):.3f} ms"
            )
        examples = build_synthetic_splits(0, (args.images, 1, 1))["train"]
        table = [
            {"url": f"{urls[i % args.images]}?copy={i // args.images}", "caption": examples[i % args.images].captions}
            for i in range(args.rows)
        ]
        with tempfile.TemporaryDirectory() as workdir:
            rows_file = str(Path(workdir) / "rows.parquet")
            pyarrow.parquet.write_table(pyarrow.Table.from_pylist(table), rows_file)
            for workers in (0, 1, 2):
                runs = stream_source(rows_file, workers, args.concurrency, args.repeats)
                results[f"stream_workers_{workers}"] = runs
                rates = [run["images_per_second"] for run in runs]
                print(
                    f"training stream, {args.rows} rows through a DataLoader with num_workers={workers}: "
                    f"{spread(rates)} img/s = {statistics.median(rates) / train_rate:.2f}× training (first batch "
                    f"after {spread([1000 * run['first_batch_seconds'] for run in runs])} ms)"
                )
            for workers in (2, 0):
                epochs = train_py_run(rows_file, workdir, workers, args.epochs)
                results[f"train_py_workers_{workers}"] = epochs
                for report in epochs:
                    print(
                        f"train.py --num_workers {workers}, epoch {report['epoch']}: trained on "
                        f"{report['images_per_second']:.1f} img/s, waited for data "
                        f"{100 * report['data_wait_fraction']:.1f}% of the time ({report['data_wait_seconds']:.2f} s "
                        f"of {report['seconds']:.1f} s, {report['first_batch_wait_seconds']:.2f} s of it for the first "
                        f"batch), {report['ok']}/{report['ok'] + report['failed']} images"
                    )
    finally:
        server.kill()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
