"""url–caption files as a streamed training source: the four file types, clipped captions, held-out rows by URL hash;
rows dealt to 2 processes × 2 DataLoader workers with no duplicate and no gap, every failure counted once by kind,
every shard the same length; a real 2-worker DataLoader; resuming mid-epoch without the consumed rows; evaluation
rows downloaded into memory."""

import json
import random
from types import SimpleNamespace
from unittest import mock

import pyarrow
import pyarrow.csv
import pyarrow.parquet
import pytest
import torch
from image_server import ImageServer, caption_rows, scene_images

from captioning.data.web.downloads import DownloadOptions
from captioning.data.web.streams import Padding, Skipped, StreamCollator, StreamProgress, epoch_order
from captioning.data.web.url_rows import (
    UrlCaptionStream,
    UrlRows,
    download_split,
    first_sentences,
    hold_out,
    read_url_rows,
)
from captioning.training.collator import CaptionCollator
from modeling_captioner import CaptionerConfig, CaptionerProcessor, build_image_processor

OPTIONS = DownloadOptions(timeout=0.5, retries=1, backoff=0.01, max_bytes=1_000_000, image_side=32, concurrency=16)


@pytest.fixture(scope="module")
def served():
    images, captions = scene_images(60, 48)
    with ImageServer(images) as server:
        yield server, caption_rows(server, captions)


def write_rows(rows: list[dict], path) -> str:
    table = pyarrow.Table.from_pylist([{"url": row["url"], "caption": row["caption"]} for row in rows])
    if path.suffix == ".parquet":
        pyarrow.parquet.write_table(table, path)
    elif path.suffix in (".csv", ".tsv"):
        options = pyarrow.csv.WriteOptions(delimiter="\t" if path.suffix == ".tsv" else ",")
        pyarrow.csv.write_csv(table, path, write_options=options)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    return str(path)


def test_url_files_of_every_type_with_clipped_captions_and_counted_skips(tmp_path):
    rows = [
        {"url": "http://a.example/1.jpg", "caption": "A dog runs on grass. Photo by Ann! Buy prints?"},
        {"url": "http://a.example/2.jpg", "caption": "Two cats sleep."},
        {"url": "", "caption": "no address"},
        {"url": "http://a.example/3.jpg", "caption": "   "},
    ]
    read = {}
    for suffix in (".parquet", ".csv", ".tsv", ".jsonl"):
        read[suffix] = read_url_rows(write_rows(rows, tmp_path / f"rows{suffix}"), caption_sentences=1)
    for parsed in read.values():
        assert parsed.urls == ["http://a.example/1.jpg", "http://a.example/2.jpg"]
        assert parsed.captions == [["A dog runs on grass."], ["Two cats sleep."]]
        assert parsed.row_ids == [0, 1]
        assert parsed.skipped.missing_image == 1 and parsed.skipped.image_without_captions == 1
    assert first_sentences("A dog runs. It is happy! Yes?", 2) == "A dog runs. It is happy!"
    assert first_sentences("  no   full stop  ", 1) == "no full stop"

    for part, texts in (("a", ["a cat", "a grey cat"]), ("b", "a dog")):
        line = json.dumps({"image_url": f"http://b.example/{part}.png", "text": texts})
        (tmp_path / f"lists-{part}.jsonl").write_text(line + "\n")
    both = read_url_rows(str(tmp_path / "lists-*.jsonl"), "image_url", "text")
    assert both.captions == [["a cat", "a grey cat"], ["a dog"]] and both.source.endswith("and 1 more file(s)")
    with pytest.raises(ValueError, match=r"rows.parquet has no column 'link' \(its columns: url, caption\)"):
        read_url_rows(str(tmp_path / "rows.parquet"), url_column="link")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        read_url_rows(str(tmp_path / "nothing-*.parquet"))


def test_held_out_rows_depend_on_the_urls_alone():
    urls = [f"http://example.invalid/{i}.jpg" for i in range(100)] + ["http://example.invalid/7.jpg"]
    rows = UrlRows(urls, [[f"c{i}"] for i in range(len(urls))], list(range(len(urls))), "test")
    parts = hold_out(rows, {"test": 10, "validation": 10})
    shuffled_order = list(range(len(urls)))
    random.Random(0).shuffle(shuffled_order)
    again = hold_out(rows.subset(shuffled_order), {"test": 10, "validation": 10})
    for split in ("train", "validation", "test"):
        assert sorted(parts[split].urls) == sorted(again[split].urls)
    assert len(set(parts["test"].urls)) == 10 and len(set(parts["validation"].urls)) == 10
    assert sum(len(part) for part in parts.values()) == len(urls)
    duplicate = "http://example.invalid/7.jpg"
    assert sum(part.urls.count(duplicate) == 2 for part in parts.values()) == 1  # both rows in the same split


def stream_of(rows: list[dict], **kwargs) -> UrlCaptionStream:
    parsed = UrlRows([r["url"] for r in rows], [[r["caption"]] for r in rows], list(range(len(rows))), "loopback")
    return UrlCaptionStream(parsed, OPTIONS, seed=3, **kwargs)


def entries_of(stream: UrlCaptionStream, worker: int | None, workers: int) -> list:
    info = None if worker is None else SimpleNamespace(id=worker, num_workers=workers)
    with mock.patch("torch.utils.data.get_worker_info", return_value=info):
        return list(stream)


def test_two_processes_by_two_workers_get_every_row_once_and_equal_shards(served):
    _, rows = served
    expected_good = {i for i, row in enumerate(rows) if row["fault"] is None}
    for epoch in (0, 1):
        seen, failures, lengths, orders = [], {}, [], []
        for process in range(2):
            stream = stream_of(rows, process_index=process, num_processes=2, num_workers=2)
            stream.set_epoch(epoch)
            for worker in range(2):
                entries = entries_of(stream, worker, 2)
                lengths.append(len(entries))
                items = [e for e in entries if isinstance(e, dict)]
                assert all(e["stream"]["shard"] == process * 2 + worker for e in items)
                seen.extend(e["index"] for e in items)
                orders.append([e["index"] for e in items])
                for e in entries:
                    if isinstance(e, Skipped):
                        failures[e.kind] = failures.get(e.kind, 0) + 1
                padding = [isinstance(e, Padding) for e in entries]
                assert padding == sorted(padding)  # padding only after the rows
        assert sorted(seen) == sorted(expected_good)  # no duplicate, no gap
        expected_failures = {}
        for row in rows:
            if row["fault"]:
                expected_failures[row["fault"]] = expected_failures.get(row["fault"], 0) + 1
        assert failures == expected_failures
        assert len(set(lengths)) == 1 and lengths[0] == stream.epoch_length() == 15  # 60 rows / 4 shards
    # The row at position i of the epoch's shuffle belongs to shard i mod 4 (here: process 0's worker 1).
    order = epoch_order(len(rows), 3, 1)
    assert {row for row in order[1::4] if row in expected_good} == set(orders[1])


def tiny_processor(tokenizer):
    config = CaptionerConfig.from_preset("tiny", tokenizer=tokenizer)
    return CaptionerProcessor(build_image_processor(config), tokenizer)


def test_a_real_two_worker_dataloader_and_resuming_mid_epoch(served, tokenizer):
    _, rows = served
    good = sorted(i for i, row in enumerate(rows) if row["fault"] is None)
    collator = StreamCollator(CaptionCollator(tiny_processor(tokenizer), max_length=16))

    def loader(stream):
        return torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2, collate_fn=collator)

    stream = stream_of(rows, num_workers=2)
    assert stream.batches_per_epoch(4) == 2 * 8  # ceil(30 rows per worker / 4) per worker
    progress = StreamProgress.of(stream)
    first_part = []
    for number, batch in enumerate(progress.timed(loader(stream))):
        info = batch.pop("stream")
        progress.update(info)
        if "labels" in batch:
            assert batch["pixel_values"].shape[-1] == 32 and len(batch["labels"]) == len(batch["indices"])
        first_part.extend(batch["indices"])
        if number == 6:  # a checkpoint after 7 batches: worker 0 gave 4 of them, worker 1 gave 3
            break
    position = progress.state_dict()
    assert position["epoch"] == 0 and position["num_shards"] == 2
    assert {shard: entries for shard, (_, _, entries) in position["shards"].items()} == {"0": 16, "1": 12}

    resumed = stream_of(rows, num_workers=2)
    resumed.set_position(json.loads(json.dumps(position)))  # as read back from training_state.json
    again = StreamProgress.of(resumed)
    again.start_epoch(0, position)
    rest, batches = [], 0
    for batch in again.timed(loader(resumed)):
        again.update(batch.pop("stream"))
        rest.extend(batch["indices"])
        batches += 1
    assert batches == 16 - 7  # the epoch's batch count, whatever was consumed before
    assert not set(first_part) & set(rest) and sorted(first_part + rest) == good
    report = again.report()
    assert report["ok"] == len(rest) and 0 <= report["data_wait_fraction"] <= 1
    assert all(done == 30 and not extra for done, extra, _ in again.state_dict()["shards"].values())

    # Persistent workers read each new epoch (its number is in shared memory): every row again, in a new order.
    stream = stream_of(rows, num_workers=2)
    persistent = torch.utils.data.DataLoader(
        stream, batch_size=4, num_workers=2, collate_fn=collator, persistent_workers=True
    )
    orders = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        orders.append([index for batch in persistent for index in batch["indices"]])
    assert sorted(orders[0]) == sorted(orders[1]) == good and orders[0] != orders[1]

    with pytest.raises(ValueError, match=r"saved with 2 shards .* this run has 1"):
        stream_of(rows).set_position(position)
    with pytest.raises(ValueError, match="built for num_workers=2 but is read by a DataLoader with 0 workers"):
        list(stream_of(rows, num_workers=2))


def test_evaluation_rows_are_downloaded_once_into_memory(served):
    server, rows = served
    picked = rows[:20]
    parsed = UrlRows([r["url"] for r in picked], [[r["caption"]] for r in picked], list(range(20)), "loopback")
    split = download_split(parsed, OPTIONS, "validation")
    faults = [r["fault"] for r in picked if r["fault"]]
    assert len(split) == 20 - len(faults) and split.downloads.failed == len(faults)
    assert split.skipped.missing_image + split.skipped.unreadable_image == len(faults)
    assert [record.image_id for record in split.records] == [r["url"] for r in picked if not r["fault"]]
    hits = sum(server.hits.values())
    item = split[0]
    assert item["image"].size == (32, 32) and item["captions"] == [picked[0]["caption"]]
    assert sum(server.hits.values()) == hits  # read from memory, not fetched again
