"""Web-scale caption data behind `--dataset_format urls` and `--dataset_format webdataset`: the flags train.py and the
evaluation command share, and what they load: a training stream (`CaptionStream`) and in-memory validation and test
splits (`CaptionDataset`)."""

from __future__ import annotations

import logging

from captioning.data.records import CaptionDataset
from captioning.data.web.downloads import add_download_arguments, download_options
from captioning.data.web.shards import WebDatasetStream, count_samples, expand_shards, read_shard_split
from captioning.data.web.streams import CaptionStream
from captioning.data.web.url_rows import UrlCaptionStream, download_split, hold_out, read_url_rows

logger = logging.getLogger(__name__)

STREAM_FORMATS = ("urls", "webdataset")
EVALUATION_SPLITS = ("validation", "test")


def add_web_data_arguments(parser) -> None:
    """The flags of `--dataset_format urls|webdataset` (an argparse parser or group), download flags included."""
    parser.add_argument(
        "--data_files",
        nargs="+",
        default=None,
        help="urls: parquet/csv/tsv/jsonl files of url–caption rows (globs too); webdataset: tar shards, local or "
        "http(s), brace patterns such as 'shards/{00000..00099}.tar'.",
    )
    parser.add_argument("--validation_files", nargs="+", default=None, help="Default: held out of --data_files.")
    parser.add_argument("--test_files", nargs="+", default=None, help="Default: held out of --data_files.")
    parser.add_argument("--url_column", default="url", help="urls: the column of image addresses.")
    parser.add_argument(
        "--caption_sentences", type=int, default=None, help="Keep only each caption's first N sentences."
    )
    parser.add_argument(
        "--held_out_rows",
        type=int,
        default=500,
        help="urls without --validation_files/--test_files: rows held out for each (the URLs that hash lowest; at "
        "most an eighth of the rows each).",
    )
    add_download_arguments(parser)


def check_web_data_arguments(args) -> None:
    """Flag combinations of the web formats that cannot load; raises SystemExit with a sentence."""
    if args.dataset_format not in STREAM_FORMATS:
        return
    if not args.data_files:
        raise SystemExit(f"--dataset_format {args.dataset_format} needs --data_files.")
    if args.caption_sentences is not None and args.caption_sentences < 1:
        raise SystemExit(f"--caption_sentences must be at least 1, got {args.caption_sentences}.")
    if args.held_out_rows < 1:
        raise SystemExit(f"--held_out_rows must be at least 1, got {args.held_out_rows}.")
    download_options(args)  # refuses bad download flags now, not after the data is read


def load_web_splits(
    args,
    image_side: int | None = None,
    process_index: int = 0,
    num_processes: int = 1,
    num_workers: int = 0,
    splits: tuple[str, ...] = ("train", *EVALUATION_SPLITS),
) -> dict[str, CaptionStream | CaptionDataset]:
    """
    The `splits` asked for: "train" as a `CaptionStream` for this process (`UrlCaptionStream` or
    `WebDatasetStream`), "validation" and "test" downloaded (or read) once into memory.

    Args:
        args: the flags of `add_web_data_arguments`, plus `dataset_format`, `caption_column`, `seed` and
            `max_train_samples` where present.
        image_side (`int`, *optional*): shrink images to this shorter side unless --max_image_side says otherwise
            (train.py passes the model's input size).
        process_index, num_processes, num_workers: where the training stream is read (see `CaptionStream`).
        splits (`tuple[str, ...]`): which splits to build (the evaluation command needs one).
    """
    options = download_options(args, image_side)
    limit = getattr(args, "max_train_samples", None)
    stream_args = {
        "seed": args.seed,
        "process_index": process_index,
        "num_processes": num_processes,
        "num_workers": num_workers,
    }
    loaded: dict = {}
    if args.dataset_format == "urls":

        def read(files):
            return read_url_rows(files, args.url_column, args.caption_column, args.caption_sentences)

        rows = read(args.data_files)
        given = {"validation": args.validation_files, "test": args.test_files}
        missing = [split for split in EVALUATION_SPLITS if not given[split]]
        size = min(args.held_out_rows, max(1, len(rows) // 8))
        parts = hold_out(rows, dict.fromkeys(missing, size))
        for split in EVALUATION_SPLITS:
            if split in splits:
                source = parts[split] if split in missing else read(given[split])
                loaded[split] = download_split(source, options, split)
        if "train" in splits:
            train = parts["train"] if limit is None else parts["train"].subset(range(min(limit, len(parts["train"]))))
            loaded["train"] = UrlCaptionStream(train, options, **stream_args)
        return loaded

    shards = expand_shards(args.data_files)
    given = {"validation": args.validation_files, "test": args.test_files}
    missing = [split for split in EVALUATION_SPLITS if not given[split]]
    if missing:
        if len(shards) < 2:
            raise SystemExit(
                f"--data_files names one shard: it cannot give both training and {' and '.join(missing)} samples. "
                "Give --validation_files and --test_files, or more shards (the last one is held out)."
            )
        held_out, shards = shards[-1:], shards[:-1]
        logger.info(f"webdataset: {held_out[0]} is held out for {' and '.join(missing)}")
    for split in EVALUATION_SPLITS:
        if split not in splits:
            continue
        if given[split]:
            loaded[split] = read_shard_split(expand_shards(given[split]), options, split, args.caption_sentences)
        else:
            # Both held out of one shard: alternate samples, so each gets half and neither the shard's tail.
            half = None if len(missing) == 1 else (lambda k, s=split: k % 2 == EVALUATION_SPLITS.index(s))
            loaded[split] = read_shard_split(held_out, options, split, args.caption_sentences, pick=half)
    if "train" in splits:
        counts = [count_samples(shard) for shard in shards]
        if limit is not None:
            counts = [max(0, min(count, limit - sum(counts[:i]))) for i, count in enumerate(counts)]
            shards, counts = [s for s, c in zip(shards, counts, strict=True) if c], [c for c in counts if c]
        try:
            loaded["train"] = WebDatasetStream(shards, counts, options, args.caption_sentences, **stream_args)
        except ValueError as error:
            raise SystemExit(str(error)) from error
    return loaded


__all__ = [
    "EVALUATION_SPLITS",
    "STREAM_FORMATS",
    "add_web_data_arguments",
    "check_web_data_arguments",
    "load_web_splits",
]
