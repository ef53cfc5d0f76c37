"""train.py on web data. A few hundred url rows served from loopback, 10% of them broken and 50 ms added to every
image, train to the end: every failure is reported by kind, every usable row is trained on once per epoch, and the
download cache serves the second epoch. A run resumed from a checkpoint mid-epoch does not train on the rows it had
already seen and ends exactly as the uninterrupted run. Shards written by the converter train as webdataset. The
augmentation flags, and no feature cache under augmentation."""

import json
import shutil
from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest
import torch
from conftest import TINY
from image_server import ImageServer, caption_rows, scene_images
from safetensors.torch import load_file

import train
from captioning.data.web.shards import write_shards
from captioning.data.web.url_rows import hold_out, read_url_rows
from captioning.evaluation import command as evaluation

ROWS = 240
HELD_OUT = 16
WEB = [
    "--download_timeout",
    "0.5",
    "--download_retries",
    "1",
    "--download_backoff",
    "0.01",
    "--download_concurrency",
    "32",
]
WEB += ["--max_image_bytes", "1000000"]  # the 3 MB body is refused as too large


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """ROWS url–caption rows in a parquet file; every tenth broken (the faults in turn), 50 ms per image."""
    images, captions = scene_images(ROWS, 48)
    with ImageServer(images, latency=0.05) as server:
        rows = caption_rows(server, captions, faulty_every=10)
        path = tmp_path_factory.mktemp("rows") / "rows.parquet"
        table = [{"url": row["url"], "caption": row["caption"]} for row in rows]
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(table), path)
        yield server, rows, str(path)


def url_run(path: str, output: Path, *extra: str) -> dict:
    arguments = [*TINY, "--dataset_format", "urls", "--data_files", path, "--held_out_rows", str(HELD_OUT)]
    return train.main([*arguments, *WEB, "--output_dir", str(output), *extra])


def expected_rows(rows: list[dict], path: str) -> dict[str, tuple[int, dict[str, int]]]:
    """Per split (train and the held-out validation and test rows): the usable rows and the faults by kind."""
    parts = hold_out(read_url_rows(path), {"validation": HELD_OUT, "test": HELD_OUT})
    fault_of = {row["url"]: row["fault"] for row in rows}
    expected = {}
    for split, part in parts.items():
        faults: dict[str, int] = {}
        for url in part.urls:
            if fault_of[url]:
                faults[fault_of[url]] = faults.get(fault_of[url], 0) + 1
        expected[split] = (len(part) - sum(faults.values()), faults)
    return expected


def test_a_faulty_url_file_trains_to_the_end_reporting_every_failure(served, tmp_path):
    _, rows, path = served
    expected = expected_rows(rows, path)
    good, faults = expected["train"]
    assert len({kind for _, by_kind in expected.values() for kind in by_kind}) == 9  # every kind of fault is met
    report = url_run(path, tmp_path, "--num_train_epochs", "2", "--download_cache_dir", str(tmp_path / "cache"))

    epochs = report["downloads"]["epochs"]
    assert [data["epoch"] for data in epochs] == [0, 1]
    for data in epochs:
        assert data["ok"] == good  # every usable row, once per epoch
        assert {kind: n for kind, n in data["failures"].items() if n} == faults
        assert data["success_rate"] == pytest.approx(good / (good + sum(faults.values())), abs=1e-6)
        assert 0 <= data["data_wait_fraction"] < 1 and data["images_per_second"] > 0
    assert epochs[0]["retries"] > 0 and epochs[1]["cached"] == good  # the second epoch came from the cache
    downloads = report["downloads"]
    assert downloads["train"]["ok"] == 2 * good and downloads["train"]["failures"]["timeout"] == 2 * faults["timeout"]
    for split in ("validation", "test"):
        assert downloads[split]["ok"] == expected[split][0]
        assert {kind: n for kind, n in downloads[split]["failures"].items() if n} == expected[split][1]
    assert report["num_images"] == downloads["test"]["ok"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["downloads"]["train"]["failures"] == downloads["train"]["failures"]

    # The evaluation command scores the same held-out rows, fetched the same way.
    command = ["--model", str(tmp_path), "--dataset_format", "urls", "--data_files", path, *WEB]
    command += ["--held_out_rows", str(HELD_OUT), "--num_beams", "2", "--max_new_tokens", "12"]
    scored = evaluation.main([*command, "--split", "test", "--output_dir", str(tmp_path / "eval")])
    assert scored["downloads"]["ok"] == downloads["test"]["ok"] and len(scored["metrics"]) > 0
    assert scored["downloads"]["failures"] == downloads["test"]["failures"]
    with pytest.raises(SystemExit, match="streams its train split"):
        evaluation.parse_args([*command, "--split", "train", "--output_dir", str(tmp_path / "eval")])


def test_resuming_mid_epoch_skips_the_rows_already_trained_on(served, tmp_path):
    _, _, path = served
    # 80 training rows in row order: 5 batches of 16 per epoch, a checkpoint after 2 of them.
    ordered = ["--download_order", "row", "--max_train_samples", "80", "--num_train_epochs", "2"]
    ordered += ["--checkpointing_steps", "2", "--checkpoints_total_limit", "10"]
    ordered += ["--cpu"]  # compared bit for bit: CPU determinism, even where a GPU is present
    straight = tmp_path / "straight"
    url_run(path, straight, *ordered)
    position = json.loads((straight / "checkpoints" / "step_2" / "training_state.json").read_text())["stream"]
    assert position["epoch"] == 0 and position["shards"]["0"][2] == 2 * 16  # two batches of 16 entries consumed

    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoints" / "step_2", resumed / "checkpoints" / "step_2")
    report = url_run(path, resumed, *ordered, "--resume_from_checkpoint", "latest")
    first, second = report["downloads"]["epochs"]
    assert first["ok"] + first["failed"] == 80 - 2 * 16  # the rest of epoch 0, nothing again
    assert second["ok"] + second["failed"] == 80
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a)  # as if never interrupted


def test_shards_from_the_converter_train_as_webdataset(served, tmp_path):
    _, _, path = served
    from captioning.data.web.downloads import DownloadOptions

    options = DownloadOptions(timeout=0.5, backoff=0.01, concurrency=32, image_side=32)
    write_shards(read_url_rows(path), tmp_path / "shards", samples_per_shard=40, options=options)
    pattern = str(tmp_path / "shards" / "{00000..00005}.tar")
    report = train.main(
        [
            *TINY,
            "--dataset_format",
            "webdataset",
            "--data_files",
            pattern,
            "--num_train_epochs",
            "1",
            "--max_train_samples",
            "64",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    data = report["downloads"]["epochs"][0]
    assert data["ok"] == report["downloads"]["train"]["ok"] == 64 and data["failed"] == 0
    assert report["num_images"] > 0 and (tmp_path / "out" / "model.safetensors").is_file()


def test_augmentation_flags_log_the_strength_and_keep_the_feature_cache_off(tmp_path):
    report = train.main(
        [
            *TINY,
            "--synthetic_sizes",
            "32,8,8",
            "--num_train_epochs",
            "2",
            "--unfreeze_schedule",
            "bridge,cross_attention,decoder@0;encoder@1",  # a frozen epoch: the cache would be used
            "--augment",
            "--augment_schedule",
            "linear",
            "--augment_ramp_epochs",
            "2",
            "--augment_max_strength",
            "0.8",
            "--augment_flip",
            "swap",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert report["optimizer_steps"] == 4
    history = json.loads((tmp_path / "checkpoints" / "step_4" / "training_state.json").read_text())["history"]
    strengths = {record["epoch"]: record["augmentation_strength"] for record in history if "loss" in record}
    assert strengths == {0: 0.0, 1: pytest.approx(0.4)}
    assert not (tmp_path / "feature_cache").exists()
    for bad, message in (
        (["--augment_max_strength", "1.5"], "within \\[0, 1\\]"),
        (["--augment_ramp_epochs", "0"], "positive number of epochs"),
    ):
        with pytest.raises(SystemExit, match=message):
            train.parse_args(["--augment", *bad])


@pytest.mark.slow
def test_two_processes_with_two_workers_each_share_the_rows(served, tmp_path):
    from test_multiprocess import launch

    _, rows, path = served
    good, faults = expected_rows(rows, path)["train"]
    arguments = [*TINY, "--dataset_format", "urls", "--data_files", path, "--held_out_rows", str(HELD_OUT), *WEB]
    arguments += ["--cpu", "--num_workers", "2", "--num_train_epochs", "1"]
    arguments += ["--checkpointing_steps", "3", "--checkpoints_total_limit", "5"]
    completed = launch(*arguments, "--output_dir", str(tmp_path), timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    (data,) = metrics["downloads"]["epochs"]
    assert data["ok"] == good and {kind: n for kind, n in data["failures"].items() if n} == faults
    # Four shards (2 processes × 2 workers); after 3 steps each process has taken 2 batches from its first worker
    # and 1 from its second, and the checkpoint holds both processes' positions.
    position = json.loads((tmp_path / "checkpoints" / "step_3" / "training_state.json").read_text())["stream"]
    assert position["num_shards"] == 4
    assert {shard: entries for shard, (_, _, entries) in position["shards"].items()} == {
        "0": 32,
        "1": 16,
        "2": 32,
        "3": 16,
    }
    # 208 training rows, 52 per shard: 4 batches of 16 per worker, 8 steps per process.
    assert metrics["num_processes"] == 2 and metrics["optimizer_steps"] == 8
