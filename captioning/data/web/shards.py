"""Webdataset tar shards in img2dataset's layout (`00000.tar` holding `000000000.jpg`, `.txt`, `.json` per sample):
read as caption data from local paths or URLs, and written from a url–caption file with the same downloader as
training (`captioner shards --data_files rows.parquet --output_dir shards/`)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import re
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from captioning.data.images import fetch_url, is_url
from captioning.data.records import SkipCounts
from captioning.data.web.downloads import (
    Downloaded,
    Downloader,
    DownloadFailed,
    DownloadOptions,
    DownloadStats,
    add_download_arguments,
    download_options,
    prepare_image,
)
from captioning.data.web.streams import (
    CaptionStream,
    Skipped,
    deal,
    epoch_order,
    in_background,
    ordered_map,
    shuffle_buffer,
)
from captioning.data.web.url_rows import UrlRows, expand_files, first_sentences, in_memory_split, read_url_rows

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_BRACES = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Brace patterns as webdataset and img2dataset write them: `shards/{00000..00009}.tar` (a zero-padded range) and
    `{train,extra}-{0..3}.tar` (alternatives), any number of groups."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    numbers = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numbers:
        first, last = numbers.groups()
        if int(last) < int(first):
            raise ValueError(f"Shard pattern {pattern}: the range {{{body}}} runs backwards.")
        choices = [f"{n:0{len(first)}d}" for n in range(int(first), int(last) + 1)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise ValueError(f"Shard pattern {pattern}: {{{body}}} is neither a range {{000..009}} nor choices {{a,b}}.")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def expand_shards(patterns: str | Sequence[str], flag: str = "--data_files") -> list[str]:
    """Tar shards named by paths, globs, brace patterns or http(s) URLs; a local shard that does not exist, or a
    glob that matches nothing, is an error naming it."""
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return expand_files([location for pattern in patterns for location in expand_braces(pattern)], flag)


@contextlib.contextmanager
def open_shard(location: str, timeout: float = 60.0) -> Iterator[BinaryIO]:
    """A local shard's file, or an http(s) shard's response body, to read as a stream."""
    if not is_url(location):
        with open(location, "rb") as handle:
            yield handle
        return
    request = urllib.request.Request(location, headers={"User-Agent": "captioner"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        yield response


def iter_samples(handle: BinaryIO) -> Iterator[tuple[str, dict[str, bytes]]]:
    """`(key, {extension: bytes})` per sample of a tar stream; a sample's files share their name up to the first dot
    of the file name (`dir/000000001.jpg` and `dir/000000001.txt` are sample `dir/000000001`), and are consecutive."""
    key, parts = None, {}
    with tarfile.open(fileobj=handle, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, name = member.name.rpartition("/")
            stem, dot, extension = name.partition(".")
            if not dot or stem.startswith("."):  # macOS ._ files and extension-less files belong to no sample
                continue
            sample = f"{folder}/{stem}" if folder else stem
            if sample != key and parts:
                yield key, parts
                parts = {}
            key = sample
            parts[extension.lower()] = tar.extractfile(member).read()
    if parts:
        yield key, parts


def image_part(parts: dict[str, bytes]) -> bytes | None:
    return next((parts[extension] for extension in IMAGE_EXTENSIONS if extension in parts), None)


def sample_captions(parts: dict[str, bytes], sentences: int | None = None) -> list[str]:
    """A sample's captions: the lines of its `.txt`, else its `.json`'s "caption" (a string or a list)."""
    if "txt" in parts:
        texts = parts["txt"].decode("utf-8", "replace").splitlines()
    elif "json" in parts:
        try:
            caption = json.loads(parts["json"]).get("caption")
        except (ValueError, AttributeError):
            caption = None
        texts = caption if isinstance(caption, list) else [caption]
    else:
        texts = []
    return [first_sentences(text, sentences) for text in texts if isinstance(text, str) and text.strip()]


def _stats_file(location: str) -> str:
    return re.sub(r"\.tar$", "", location) + "_stats.json"


def count_samples(location: str) -> int:
    """Samples with an image in a shard: from the `_stats.json` beside it (img2dataset's "successes"), else by
    reading the shard's headers."""
    stats = _stats_file(location)
    try:
        if is_url(stats):
            return int(json.loads(fetch_url(stats, timeout=30, max_bytes=1 << 20)[0])["successes"])
        if os.path.isfile(stats):
            return int(json.loads(Path(stats).read_text())["successes"])
    except Exception:  # no usable stats file: count instead
        pass
    with open_shard(location) as handle:
        return sum(image_part(parts) is not None for _, parts in iter_samples(handle))


class WebDatasetStream(CaptionStream):
    """
    Training samples from webdataset tar shards. Each epoch orders the shards by (seed, epoch) and deals shard file i
    to stream shard i mod (processes × workers), as webdataset's split_by_node/split_by_worker do, so there must be
    at least that many files; each worker reads its files in turn and decodes the images in a small thread pool.
    Samples whose image does not decode or that have no caption yield `Skipped` entries; see `CaptionStream`.

    Args:
        shards (`list[str]`): tar files or URLs.
        counts (`list[int]`): samples with an image in each (`count_samples`).
        options (`DownloadOptions`): `max_pixels`, `image_side` and `decode_threads` apply.
        caption_sentences (`int`, *optional*): keep each caption's first N sentences.
        seed, process_index, num_processes, num_workers: see `CaptionStream`.
        shuffle (`bool`, *optional*, defaults to `True`): shuffle the shard files each epoch.
        shuffle_buffer (`int`, *optional*, defaults to 1000): samples a reader mixes before handing them over (1:
            file order).
        captions (`list[str]`, *optional*): every training caption, if known (for building a tokenizer).
    """

    name = "webdataset"

    def __init__(
        self,
        shards: list[str],
        counts: list[int],
        options: DownloadOptions,
        caption_sentences: int | None = None,
        seed: int = 0,
        process_index: int = 0,
        num_processes: int = 1,
        num_workers: int = 0,
        shuffle: bool = True,
        captions: list[str] | None = None,
        shuffle_buffer: int = 1000,
    ):
        super().__init__(seed, process_index, num_processes, num_workers)
        if len(shards) < self.num_shards:
            raise ValueError(
                f"{len(shards)} webdataset shard file(s) for {self.num_shards} readers ({num_processes} process(es) × "
                f"{max(1, num_workers)} DataLoader worker(s)): each reader needs a file of its own. Write smaller "
                "shards (--samples_per_shard) or use fewer --num_workers."
            )
        self.shards, self.counts, self.options = shards, counts, options
        self.caption_sentences, self.shuffle, self.captions = caption_sentences, shuffle, captions
        self.shuffle_buffer = shuffle_buffer if shuffle else 1
        self.offsets = [sum(counts[:i]) for i in range(len(counts))]
        self.source = shards[0] if len(shards) == 1 else f"{shards[0]} and {len(shards) - 1} more shard(s)"

    @property
    def num_rows(self) -> int:
        return sum(self.counts)

    def all_captions(self) -> list[str]:
        """Every training caption: from the `.parquet` img2dataset writes beside each shard, else read from the
        shards themselves (once)."""
        if self.captions is None:
            self.captions = [c for shard in self.shards for c in shard_captions(shard, self.caption_sentences)]
        return self.captions

    def _files_of(self, epoch: int, shard: int, num_shards: int) -> list[int]:
        order = epoch_order(len(self.shards), self.seed, epoch, self.shuffle)
        return [order[i] for i in deal(len(self.shards), shard, num_shards)]

    def shard_lengths(self, epoch: int, num_shards: int) -> list[int]:
        files = (self._files_of(epoch, shard, num_shards) for shard in range(num_shards))
        return [sum(self.counts[f] for f in of_shard) for of_shard in files]

    def epoch_length(self, epoch: int | None = None) -> int:
        """The most samples any reader can be dealt (its share of files being the largest ones): the same every
        epoch, so every epoch has the same number of steps, whichever files each reader gets."""
        return sum(sorted(self.counts, reverse=True)[: math.ceil(len(self.shards) / self.num_shards)])

    def shard_units(self, epoch: int, shard: int, num_shards: int) -> list[tuple[int, int]]:
        return [(f, k) for f in self._files_of(epoch, shard, num_shards) for k in range(self.counts[f])]

    def produce(self, shard: int, todo: list[tuple[int, tuple[int, int]]]) -> Iterator[tuple[int, dict | Skipped]]:
        wanted = {unit: seq for seq, unit in todo}
        files = list(dict.fromkeys(f for _, (f, _) in todo))
        pool = ThreadPoolExecutor(self.options.decode_threads, thread_name_prefix="captioner-decode")
        jobs = (job for f in files for job in self._jobs(shard, f, wanted))
        entries = in_background(ordered_map(pool, self._entry, jobs, window=4 * self.options.decode_threads))
        try:
            if self.shuffle_buffer > 1:
                # Samples of one file sit together: a buffer mixes them (webdataset's .shuffle), by (seed, epoch,
                # shard). Resuming does not depend on the order, only on which samples were consumed.
                entries = shuffle_buffer(
                    entries, self.shuffle_buffer, random.Random(f"{self.seed}:{self.epoch}:{shard}")
                )
            yield from entries
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _jobs(self, shard: int, f: int, wanted: dict) -> Iterator[tuple]:
        """The decoding jobs of shard file `f`'s wanted samples; a file that ends early or cannot be read gives
        `Skipped` entries for its missing samples."""
        location, k = self.shards[f], 0
        try:
            with open_shard(location) as handle:
                for key, parts in iter_samples(handle):
                    body = image_part(parts)
                    if body is None:
                        continue
                    if (f, k) in wanted:
                        yield shard, wanted[(f, k)], self.offsets[f] + k, f"{location}#{key}", body, parts
                    k += 1
                    if k == self.counts[f]:
                        break
            problem = ("truncated", f"{location}: holds {k} samples, {self.counts[f]} were counted")
        except (OSError, tarfile.TarError, EOFError) as error:
            problem = ("truncated", f"{location}: cannot read it after {k} samples ({error})")
        for missing in range(k, self.counts[f]):
            if (f, missing) in wanted:
                yield shard, wanted[(f, missing)], None, location, None, problem

    def _entry(self, shard: int, seq: int, index: int | None, where: str, body: bytes | None, parts) -> tuple:
        if body is None:
            return seq, Skipped(shard, seq, *parts)
        captions = sample_captions(parts, self.caption_sentences)
        if not captions:
            return seq, Skipped(shard, seq, "no_caption", f"{where}: no caption text (.txt or .json)")
        try:
            image, _ = prepare_image(body, where, self.options.max_pixels, self.options.image_side)
        except DownloadFailed as failure:
            return seq, Skipped(shard, seq, failure.kind, str(failure))
        stream = {"bytes": len(body), "attempts": 1, "cached": False}
        return seq, {"image": image, "captions": captions, "image_id": where, "index": index, "stream": stream}


def shard_captions(location: str, sentences: int | None = None) -> list[str]:
    """The captions of a shard's samples: from its `.parquet` sidecar (rows with status "success") where there is
    one, else from the shard."""
    sidecar = re.sub(r"\.tar$", ".parquet", location)
    if not is_url(location) and sidecar != location and os.path.isfile(sidecar):
        import pyarrow.parquet

        table = pyarrow.parquet.read_table(sidecar, columns=["caption", "status"]).to_pylist()
        texts = [line for row in table if row["status"] == "success" for line in (row["caption"] or "").splitlines()]
        return [first_sentences(text, sentences) for text in texts if text.strip()]
    return [caption for _, _, captions in _read_captions(location, sentences) for caption in captions]


def _read_captions(location: str, sentences: int | None) -> Iterator[tuple[str, bytes | None, list[str]]]:
    with open_shard(location) as handle:
        for key, parts in iter_samples(handle):
            body = image_part(parts)
            if body is not None:
                yield key, body, sample_captions(parts, sentences)


def read_shard_split(shards: list[str], options: DownloadOptions, split: str, sentences: int | None, pick=None):
    """Samples of `shards` decoded once into an in-memory `CaptionDataset` (for evaluation); `pick(k)` keeps the
    k-th sample where given. Undecodable samples are counted as `Downloads.failures` by kind."""

    def results() -> Iterator[tuple[Downloaded, list[str]]]:
        k = 0
        for shard in shards:
            for key, body, captions in _read_captions(shard, sentences):
                k += 1
                if pick is not None and not pick(k - 1):
                    continue
                result = Downloaded(key=key, url=f"{shard}#{key}", num_bytes=len(body), attempts=1)
                try:
                    if not captions:
                        raise DownloadFailed("no_caption", f"{result.url}: no caption text")
                    result.image, result.data = prepare_image(
                        body, result.url, options.max_pixels, options.image_side, "compact"
                    )
                except DownloadFailed as failure:
                    result.failure, result.message = failure.kind, str(failure)
                yield result, captions

    return in_memory_split(results(), "webdataset", split, shards[0], SkipCounts())


# ---------------------------------------------------------------------------------------------------------------
# Writing shards
# ---------------------------------------------------------------------------------------------------------------


def _extension(data: bytes) -> str:
    import PIL.Image

    with PIL.Image.open(io.BytesIO(data)) as image:
        return {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(image.format, "jpg")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same rows give the same bytes
    tar.addfile(info, io.BytesIO(data))


def write_shard(output_dir: Path, shard: int, rows: UrlRows, first: int, results: dict[int, Downloaded]) -> dict:
    """One shard as img2dataset writes it: `NNNNN.tar` (image, .txt, .json per downloaded row), `NNNNN.parquet` (a
    row per input row, with its status) and `NNNNN_stats.json`, written last (it marks the shard complete)."""
    import pyarrow
    import pyarrow.parquet

    stats, table = DownloadStats(), []
    name = f"{shard:05d}"
    temporary = output_dir / f".{name}.tar.partial"
    with tarfile.open(temporary, "w") as tar:
        for i in sorted(results):
            result, row = results[i], first + i
            stats.add(result)
            key = f"{name}{i:04d}"
            caption = "\n".join(rows.captions[row])
            record = {"key": key, "url": result.url, "caption": caption, "status": "success", "error_message": None}
            if result.image is None:
                record.update(status="failed_to_download", error_message=f"{result.failure}: {result.message}")
            else:
                record.update(width=result.image.width, height=result.image.height)
                _add_member(tar, f"{key}.{_extension(result.data)}", result.data)
                _add_member(tar, f"{key}.txt", caption.encode())
                _add_member(tar, f"{key}.json", json.dumps(record).encode())
            table.append(record)
    os.replace(temporary, output_dir / f"{name}.tar")
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(table), output_dir / f"{name}.parquet")
    summary = {"count": len(results), "successes": stats.ok, "failed_to_download": stats.failed, **stats.as_dict()}
    (output_dir / f"{name}_stats.json").write_text(json.dumps(summary, indent=1))
    return summary


def write_shards(
    rows: UrlRows, output_dir: str | os.PathLike, samples_per_shard: int = 1000, options: DownloadOptions | None = None
) -> DownloadStats:
    """
    Downloads `rows` into webdataset shards of `samples_per_shard` input rows each (img2dataset's convention: a
    shard's rows are fixed before downloading, so failed rows leave it short). Shards whose `_stats.json` exists are
    kept as they are, so an interrupted conversion continues where it stopped.

    Returns the `DownloadStats` of the rows downloaded now.
    """
    if samples_per_shard < 1 or samples_per_shard > 10_000:
        raise ValueError(f"samples_per_shard={samples_per_shard}: expected 1 to 10000 (keys have 4 digits per shard).")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    num_shards = math.ceil(len(rows) / samples_per_shard)
    todo = [s for s in range(num_shards) if not (output / f"{s:05d}_stats.json").is_file()]
    sizes = {s: min(samples_per_shard, len(rows) - s * samples_per_shard) for s in todo}
    requests = (((s, i), rows.urls[s * samples_per_shard + i]) for s in todo for i in range(sizes[s]))
    pending: dict[int, dict[int, Downloaded]] = {s: {} for s in todo}
    total = DownloadStats()
    for result in Downloader(options, keep_data=True).download(requests):
        shard, i = result.key
        pending[shard][i] = result
        total.add(result)
        if len(pending[shard]) == sizes[shard]:
            write_shard(output, shard, rows, shard * samples_per_shard, pending.pop(shard))
    return total


SHARDS_DESCRIPTION = (
    "Download a url–caption file into webdataset tar shards (img2dataset's layout) for --dataset_format webdataset."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `shards` subcommand's options."""
    parser.add_argument("--data_files", nargs="+", required=True, help="parquet, csv, tsv or jsonl files (or globs).")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--samples_per_shard", type=int, default=1000)
    parser.add_argument("--url_column", default="url")
    parser.add_argument("--caption_column", default="caption")
    parser.add_argument("--caption_sentences", type=int, default=None, help="Keep each caption's first N sentences.")
    add_download_arguments(parser)
    parser.set_defaults(run=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="captioner shards", description=SHARDS_DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    try:
        rows = read_url_rows(args.data_files, args.url_column, args.caption_column, args.caption_sentences)
        started = time.perf_counter()
        stats = write_shards(rows, args.output_dir, args.samples_per_shard, download_options(args))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    count = math.ceil(len(rows) / args.samples_per_shard)
    last = f"{count - 1:05d}"
    pattern = f"{args.output_dir.rstrip('/')}/{{00000..{last}}}.tar" if count > 1 else f"{args.output_dir}/00000.tar"
    print(
        f"{len(rows)} rows in {count} shard(s): {pattern}; downloaded now: {stats.report()}; "
        f"{stats.attempted / max(seconds, 1e-9):.0f} rows/s"
    )
    return 0


__all__ = [
    "WebDatasetStream",
    "count_samples",
    "expand_braces",
    "expand_shards",
    "iter_samples",
    "open_shard",
    "read_shard_split",
    "sample_captions",
    "shard_captions",
    "write_shard",
    "write_shards",
]

if __name__ == "__main__":
    sys.exit(main())
