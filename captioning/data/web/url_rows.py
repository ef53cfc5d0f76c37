"""url–caption files (parquet, csv, tsv, jsonl) as caption data: rows read and checked, captions clipped to their first
sentences, validation and test rows held out by URL hash, the training rows streamed through the downloader, and
evaluation rows downloaded once into memory."""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image

from captioning.data.images import fetch_url, is_url
from captioning.data.records import CaptionDataset, CaptionRecord, SkipCounts
from captioning.data.splits import finish_split
from captioning.data.web.downloads import Downloaded, Downloader, DownloadOptions, DownloadStats, import_aiohttp
from captioning.data.web.streams import CaptionStream, Skipped, deal, epoch_order

logger = logging.getLogger(__name__)

URL_FILE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
# A sentence ends at . ! or ? followed by a space and more text ("Mr. Smith" is cut too: alt text rarely has it).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def first_sentences(text: str, count: int | None) -> str:
    """The first `count` sentences of `text` (all of it for `None`), whitespace tidied."""
    text = " ".join(text.split())
    if count is None:
        return text
    return " ".join(_SENTENCE_END.split(text)[:count])


def expand_files(patterns: str | Sequence[str], flag: str = "--data_files") -> list[str]:
    """Files, globs (`rows/*.parquet`, `**` for subfolders) and http(s) URLs, expanded in order; a pattern that names
    nothing is an error naming it."""
    found = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        if is_url(pattern):
            found.append(pattern)
        elif any(character in pattern for character in "*?["):
            matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
            if not matches:
                raise FileNotFoundError(f"{flag} {pattern}: no file matches this pattern.")
            found.extend(matches)
        elif not os.path.isfile(os.path.expanduser(pattern)):
            raise FileNotFoundError(f"{flag} {pattern}: no such file.")
        else:
            found.append(os.path.expanduser(pattern))
    return found


@dataclass
class UrlRows:
    """
    The usable rows of url–caption files.

    Args:
        urls (`list[str]`): one image address per row.
        captions (`list[list[str]]`): each row's captions (one, or several where the column holds lists).
        row_ids (`list[int]`): each row's number in the files read (counting every row, usable or not): it keys the
            caption picked and the augmentation drawn for the row each epoch.
        source (`str`): the files, for messages.
        skipped (`SkipCounts`): rows left out while reading (no URL, empty captions).
    """

    urls: list[str]
    captions: list[list[str]]
    row_ids: list[int]
    source: str
    skipped: SkipCounts = field(default_factory=SkipCounts)

    def __len__(self) -> int:
        return len(self.urls)

    def subset(self, indices: Iterable[int]) -> UrlRows:
        indices = list(indices)
        return UrlRows(
            [self.urls[i] for i in indices],
            [self.captions[i] for i in indices],
            [self.row_ids[i] for i in indices],
            self.source,
            self.skipped,
        )


def _read_table(path: str, file_format: str):
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    source = path
    if is_url(path):
        source = io.BytesIO(fetch_url(path, timeout=60, max_bytes=1 << 33)[0])
    if file_format == "parquet":
        return pyarrow.parquet.read_table(source)
    if file_format == "jsonl":
        return pyarrow.json.read_json(source)
    delimiter = "\t" if file_format == "tsv" else ","
    options = pyarrow.csv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    return pyarrow.csv.read_csv(source, parse_options=options)


def read_url_rows(
    files: str | Sequence[str],
    url_column: str = "url",
    caption_column: str = "caption",
    caption_sentences: int | None = None,
) -> UrlRows:
    """
    Reads url–caption files into `UrlRows`.

    Args:
        files (`str` or `list[str]`): parquet, csv, tsv or jsonl files (by extension), globs or http(s) URLs.
        url_column (`str`, *optional*, defaults to `"url"`): the column of image addresses.
        caption_column (`str`, *optional*, defaults to `"caption"`): the caption column (a string, or a list of
            strings, per row).
        caption_sentences (`int`, *optional*): keep only each caption's first N sentences (alt texts often go on
            about other things after the first).

    Raises:
        `FileNotFoundError` for a missing file, `ValueError` for an unknown extension, a missing column (naming the
        file and its columns) or files with no usable row.
    """
    if caption_sentences is not None and caption_sentences < 1:
        raise ValueError(f"caption_sentences={caption_sentences}: keep at least one sentence (or None for all).")
    paths = expand_files(files)
    urls, captions, row_ids, skipped = [], [], [], SkipCounts()
    row_number = 0
    for path in paths:
        suffix = Path(path.split("?")[0]).suffix.lower()
        if suffix not in URL_FILE_FORMATS:
            raise ValueError(
                f"{path}: unknown url–caption file type {suffix!r}; expected one of {', '.join(URL_FILE_FORMATS)}."
            )
        table = _read_table(path, URL_FILE_FORMATS[suffix])
        for column, flag in ((url_column, "--url_column"), (caption_column, "--caption_column")):
            if column not in table.column_names:
                raise ValueError(
                    f"{path} has no column {column!r} (its columns: {', '.join(table.column_names)}); set {flag}."
                )
        for url, raw in zip(
            table.column(url_column).to_pylist(), table.column(caption_column).to_pylist(), strict=True
        ):
            url = url.strip() if isinstance(url, str) else ""
            texts = raw if isinstance(raw, list) else [raw]
            kept = [first_sentences(t, caption_sentences) for t in texts if isinstance(t, str) and t.strip()]
            if not url:
                skipped.add("missing_image", f"{Path(path).name} row {row_number}")
            elif len(kept) < len(texts):
                skipped.add("empty_caption", url, count=len(texts) - len(kept))
            if url and not kept:
                skipped.add("image_without_captions", url)
            if url and kept:
                urls.append(url)
                captions.append(kept)
                row_ids.append(row_number)
            row_number += 1
    source = paths[0] if len(paths) == 1 else f"{paths[0]} and {len(paths) - 1} more file(s)"
    if not urls:
        raise ValueError(f"{source}: no usable url–caption row ({skipped.report()}).")
    return UrlRows(urls, captions, row_ids, source, skipped)


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def hold_out(rows: UrlRows, sizes: dict[str, int]) -> dict[str, UrlRows]:
    """
    Held-out rows and the rest: `hold_out(rows, {"test": 500, "validation": 500})` gives the rows of the 500 URLs
    that hash lowest to test, the next 500 URLs' to validation, and the other rows to "train". The choice depends on
    the URLs alone (not their order, the seed or how the rows are split into files), so every run and every process
    holds out the same images, and rows sharing a URL share a split.
    """
    by_url: dict[str, list[int]] = {}
    for index, url in enumerate(rows.urls):
        by_url.setdefault(url, []).append(index)
    ordered = sorted(by_url, key=url_hash)
    parts, start = {}, 0
    for split, size in sizes.items():
        parts[split], start = ordered[start : start + size], start + size
    parts["train"] = ordered[start:]
    return {split: rows.subset(sorted(i for url in urls for i in by_url[url])) for split, urls in parts.items()}


class UrlCaptionStream(CaptionStream):
    """
    The training rows of url–caption files, downloaded as they are read: each epoch shuffles the rows by (seed,
    epoch), deals position i to shard i mod (processes × workers), and each shard's DataLoader worker downloads its
    rows with a `Downloader` (concurrently, off the training loop). Rows that give no image yield `Skipped` entries,
    counted by kind; see `CaptionStream`.

    Args:
        rows (`UrlRows`): the training rows.
        options (`DownloadOptions`): how images are fetched and prepared.
        seed, process_index, num_processes, num_workers: see `CaptionStream`.
        shuffle (`bool`, *optional*, defaults to `True`): shuffle the rows each epoch (else file order).
    """

    name = "urls"

    def __init__(
        self,
        rows: UrlRows,
        options: DownloadOptions,
        seed: int = 0,
        process_index: int = 0,
        num_processes: int = 1,
        num_workers: int = 0,
        shuffle: bool = True,
    ):
        super().__init__(seed, process_index, num_processes, num_workers)
        import_aiohttp()  # missing, it is named now; present, DataLoader workers forked from here need not import it
        self.rows, self.options, self.shuffle = rows, options, shuffle
        self.source, self.skipped = rows.source, rows.skipped

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def all_captions(self) -> list[str]:
        return [caption for captions in self.rows.captions for caption in captions]

    def shard_lengths(self, epoch: int, num_shards: int) -> list[int]:
        return [len(deal(len(self.rows), shard, num_shards)) for shard in range(num_shards)]

    def shard_units(self, epoch: int, shard: int, num_shards: int) -> list[int]:
        order = epoch_order(len(self.rows), self.seed, epoch, self.shuffle)
        return [order[position] for position in deal(len(self.rows), shard, num_shards)]

    def produce(self, shard: int, todo: list[tuple[int, int]]) -> Iterator[tuple[int, dict | Skipped]]:
        requests = ((seq, self.rows.urls[row]) for seq, row in todo)
        rows_of = dict(todo)
        for result in Downloader(self.options).download(requests):
            seq, row = result.key, rows_of[result.key]
            if result.image is None:
                yield seq, Skipped(shard, seq, result.failure, result.message, result.attempts)
                continue
            yield (
                seq,
                {
                    "image": result.image,
                    "captions": list(self.rows.captions[row]),
                    "image_id": result.url,
                    "index": self.rows.row_ids[row],
                    "stream": {"bytes": result.num_bytes, "attempts": result.attempts, "cached": result.cached},
                },
            )


# How a download failure reads in a split's SkipCounts; the network's failures are "missing_image".
_SKIP_REASONS = {
    "too_large": "unreadable_image",
    "not_an_image": "unreadable_image",
    "corrupt_image": "unreadable_image",
    "decompression_bomb": "unreadable_image",
    "no_caption": "image_without_captions",
}


class StoredImage:
    """An image file held in memory, decoded when called (a picklable `CaptionRecord.image`)."""

    def __init__(self, data: bytes):
        self.data = data

    def __call__(self) -> PIL.Image.Image:
        with PIL.Image.open(io.BytesIO(self.data)) as image:
            image.load()
            return image.copy()


def in_memory_split(
    results: Iterable[tuple[Downloaded, list[str]]], name: str, split: str, source: str, skipped: SkipCounts
) -> CaptionDataset:
    """
    A map-style `CaptionDataset` of prepared images held in memory (for evaluation): one record per result with an
    image, in the order given. Failures are counted in `skipped` (unreachable images as `missing_image`, bodies that
    are no usable image as `unreadable_image`, samples without caption as `image_without_captions`) and, by kind,
    in the dataset's `downloads` (`DownloadStats`).
    """

    stats, records, seen = DownloadStats(), [], set()
    for result, captions in results:
        stats.add(result)
        if result.image is None:
            skipped.add(_SKIP_REASONS.get(result.failure, "missing_image"), f"{result.url} ({result.failure})")
            continue
        image_id = result.url if result.url not in seen else f"{result.url}#{len(records)}"
        seen.add(image_id)
        records.append(CaptionRecord(image_id, StoredImage(result.data), list(captions)))
    logger.info("%s %s: %s", name, split, stats.report())
    dataset = finish_split(records, name, split, source, skipped)
    dataset.downloads = stats
    return dataset


def download_split(rows: UrlRows, options: DownloadOptions, split: str) -> CaptionDataset:
    """The rows downloaded once (through the same `Downloader` as training) into an in-memory `CaptionDataset`."""
    results: dict[int, Downloaded] = {}
    for result in Downloader(options, keep_data=True).download(enumerate(rows.urls)):
        results[result.key] = result
    ordered = ((results[i], rows.captions[i]) for i in range(len(rows)))
    return in_memory_split(ordered, "urls", split, rows.source, SkipCounts())


__all__ = [
    "URL_FILE_FORMATS",
    "StoredImage",
    "UrlCaptionStream",
    "UrlRows",
    "download_split",
    "expand_files",
    "first_sentences",
    "hold_out",
    "in_memory_split",
    "read_url_rows",
]
