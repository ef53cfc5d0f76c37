"""Webdataset shards: brace patterns; `captioner shards` downloads a url–caption file served on loopback
into img2dataset-style tars (failures recorded, an interrupted conversion continued); the shards read back from disk
and over HTTP by 2 processes × 2 workers give every sample once; bad samples and short shards are counted; held-out
evaluation samples."""

import argparse
import io
import json
import tarfile
from types import SimpleNamespace
from unittest import mock

import pyarrow
import pyarrow.parquet
import pytest
from image_server import ImageServer, caption_rows, scene_images

from captioning.data.web import shards
from captioning.data.web.downloads import DownloadOptions
from captioning.data.web.splits import add_web_data_arguments, load_web_splits
from captioning.data.web.streams import Skipped

OPTIONS = DownloadOptions(timeout=0.5, retries=1, backoff=0.01, max_bytes=1_000_000, image_side=32, concurrency=16)


def test_brace_patterns():
    assert shards.expand_braces("s/{0008..0011}.tar") == ["s/0008.tar", "s/0009.tar", "s/0010.tar", "s/0011.tar"]
    assert shards.expand_braces("{a,b}-{0..1}.tar") == ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]
    with pytest.raises(ValueError, match="runs backwards"):
        shards.expand_braces("{9..1}.tar")
    with pytest.raises(FileNotFoundError, match="no such file"):
        shards.expand_shards("/nowhere/{0..1}.tar")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """60 rows (every tenth broken) converted into shards of 10 rows by the command."""
    images, captions = scene_images(60, 48)
    with ImageServer(images) as server:
        rows = caption_rows(server, captions)
        folder = tmp_path_factory.mktemp("shards")
        table = pyarrow.Table.from_pylist([{"url": r["url"], "caption": r["caption"]} for r in rows])
        pyarrow.parquet.write_table(table, folder / "rows.parquet")
        command = ["--data_files", str(folder / "rows.parquet"), "--output_dir", str(folder / "out")]
        command += ["--samples_per_shard", "10", "--download_timeout", "0.5", "--download_backoff", "0.01"]
        command += ["--max_image_side", "32"]
        assert shards.main(command) == 0
        hits = sum(server.hits.values())
        (folder / "out" / "00003_stats.json").unlink()  # as if interrupted before shard 3 was complete
        assert shards.main(command) == 0
        assert 10 <= sum(server.hits.values()) - hits <= 13  # shard 3's ten rows again, and nothing else
        yield folder / "out", rows


def test_the_converter_writes_img2dataset_shards(converted, capsys):
    out, rows = converted
    assert sorted(p.name for p in out.glob("*.tar")) == [f"{i:05d}.tar" for i in range(6)]
    with tarfile.open(out / "00001.tar") as tar:
        names = tar.getnames()
        record = json.loads(tar.extractfile("000010002.json").read())
    good = [i for i in range(10, 20) if rows[i]["fault"] is None]
    assert names[:3] == ["000010000.jpg", "000010000.txt", "000010000.json"] and len(names) == 3 * len(good)
    assert record["url"] == rows[12]["url"] and record["caption"] == rows[12]["caption"] and record["width"] == 32
    table = pyarrow.parquet.read_table(out / "00001.parquet").to_pylist()
    assert [r["status"] for r in table] == [
        "success" if rows[i]["fault"] is None else "failed_to_download" for i in range(10, 20)
    ]
    assert rows[19]["fault"] in table[-1]["error_message"]
    stats = json.loads((out / "00001_stats.json").read_text())
    assert stats["count"] == 10 and stats["successes"] == len(good) and stats["failures"][rows[19]["fault"]] == 1
    assert shards.main(["--data_files", str(out / "missing.parquet"), "--output_dir", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err


def read_all(stream, num_processes: int, workers: int) -> list[list]:
    """The entries of every (process, worker) shard, as a real run would read them."""
    everything = []
    for process in range(num_processes):
        stream.process_index = process
        for worker in range(workers):
            info = SimpleNamespace(id=worker, num_workers=workers)
            with mock.patch("torch.utils.data.get_worker_info", return_value=info):
                everything.append(list(stream))
    return everything


def test_shards_read_from_disk_and_http_give_every_sample_once(converted):
    out, rows = converted
    local = shards.expand_shards(str(out / "{00000..00005}.tar"))
    counts = [shards.count_samples(shard) for shard in local]
    good = [r["caption"] for r in rows if r["fault"] is None]
    assert sum(counts) == len(good)
    files = {path.name: path.read_bytes() for path in out.iterdir() if path.suffix in (".tar", ".json")}
    with ImageServer(files) as server:
        remote = shards.expand_shards(server.url("img", "{00000..00005}.tar"))
        assert [shards.count_samples(shard) for shard in remote] == counts  # from the _stats.json beside each
        for locations in (local, remote):
            stream = shards.WebDatasetStream(locations, counts, OPTIONS, seed=1, num_processes=2, num_workers=2)
            stream.set_epoch(1)
            entries = read_all(stream, 2, 2)
            items = [e for shard in entries for e in shard if isinstance(e, dict)]
            assert sorted(item["captions"][0] for item in items) == sorted(good)
            assert len({item["index"] for item in items}) == len(items)
            assert items[0]["image"].size == (32, 32)
            assert len({len(shard) for shard in entries}) == 1  # padded to the longest reader's share


def test_bad_samples_and_short_shards_are_counted(tmp_path):
    images, _captions = scene_images(3, 32)
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        for key, parts in (
            ("a", {"jpg": images["00000.jpg"], "txt": b"a red circle"}),
            ("b", {"jpg": b"<html>not an image</html>", "txt": b"broken"}),
            ("c", {"png": images["00001.jpg"], "json": json.dumps({"caption": ""}).encode()}),
            ("d", {"jpg": images["00002.jpg"], "json": json.dumps({"caption": "a blue square"}).encode()}),
        ):
            for extension, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    assert shards.count_samples(str(tmp_path / "bad.tar")) == 4
    stream = shards.WebDatasetStream([str(tmp_path / "bad.tar")], [6], OPTIONS, shuffle=False)
    entries = list(stream)
    assert [e["captions"] for e in entries if isinstance(e, dict)] == [["a red circle"], ["a blue square"]]
    kinds = [e.kind for e in entries if isinstance(e, Skipped)]
    assert kinds == ["not_an_image", "no_caption", "truncated", "truncated"]  # 6 counted, 4 in the file
    with pytest.raises(ValueError, match=r"1 webdataset shard file.* for 2 readers"):
        shards.WebDatasetStream([str(tmp_path / "bad.tar")], [4], OPTIONS, num_workers=2)


def web_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset_format")
    parser.add_argument("--caption_column", default="caption")
    parser.add_argument("--seed", type=int, default=0)
    add_web_data_arguments(parser)
    return parser.parse_args(argv)


def test_the_last_shard_is_held_out_for_evaluation(converted):
    out, rows = converted
    args = web_args("--dataset_format", "webdataset", "--data_files", str(out / "{00000..00005}.tar"))
    loaded = load_web_splits(args, image_side=32)
    last = [r["caption"] for r in rows[50:] if r["fault"] is None]
    assert [len(loaded["validation"]), len(loaded["test"])] == [(len(last) + 1) // 2, len(last) // 2]
    held = [item["captions"][0] for split in ("validation", "test") for item in loaded[split]]
    assert sorted(held) == sorted(last)
    assert loaded["train"].num_rows == sum(r["fault"] is None for r in rows[:50])
    assert loaded["validation"][0]["image"].size == (32, 32)
