"""Smoke test of bench/bench_vs_ved.py (with ved_matched.py and ved_training.py): every part runs at toy sizes in
seconds, so the benchmark cannot rot. It checks shapes of the results, never speed."""

import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.bench_vs_ved import (
    PARTS,
    format_table,
    generation_rows,
    parse_args,
    tensor_peak_mib,
    training_rows,
)
from bench.ved_matched import CAPTIONER, MODELS, TRANSFORMER, VED, build_bench, build_model, parameter_counts
from bench.ved_training import STAGES, frozen_captioner, frozen_rows, frozen_ved, pair_rows, quality_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    # Toy models gain nothing from a second thread, and one thread keeps the test quick on a busy CI machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_bench("tiny", (16, 1, 4), "cpu")
    torch.set_num_threads(threads)


def assert_ratios_of(row: dict) -> None:
    """A row's ratio is what its values say: captioner / VED repeat by repeat when both ran alike (else the ratio of
    the medians), and the median of those; every value a positive measurement."""
    ours, theirs = row["captioner"], row["ved"]
    assert all(value > 0 for value in ours + theirs), row
    if len(ours) == len(theirs):
        assert row["ratios"] == pytest.approx([a / b for a, b in zip(ours, theirs, strict=True)]), row
    else:
        assert row["ratios"] == pytest.approx([statistics.median(ours) / statistics.median(theirs)]), row
    assert row["ratio"] == pytest.approx(statistics.median(row["ratios"])), row


def test_models_are_matched(bench):
    counts = {name: parameter_counts(build_model(name, bench)) for name in MODELS}
    assert counts[CAPTIONER]["vision"] == counts[VED]["vision"]
    assert counts[CAPTIONER]["decoder"] == counts[VED]["decoder"]
    # feature_projection="none": captioner passes the ViT's features on as VED does, to the last parameter.
    assert counts[CAPTIONER] == counts[VED] and counts[VED]["bridge"] == 0
    assert abs(counts[TRANSFORMER]["decoder"] / counts[VED]["decoder"] - 1) < 0.02


def test_every_part_gives_rows(bench):
    rows = training_rows(bench, [4], repeats=2, steps=1)
    rows += generation_rows(bench, repeats=1, batch_size=2, max_new_tokens=2, latency_images=1)
    quality, scores = quality_rows(bench, minutes=0.003, batch_size=4, runs=1, beams=1, max_new_tokens=3)
    rows += quality
    frozen, fill = frozen_rows(bench, repeats=1, images=8, batch_size=4)
    rows += frozen
    (pairs,) = pair_rows(bench, repeats=1, images=4, batch_size=10)
    assert "(tiny, 10 pairs a step; decoder + cross-attention train), feature cache + 5 captions" in pairs["row"]
    assert_ratios_of(pairs)
    assert [row["row"].split("batch 4; decoder + cross-attention train)")[1] for row in frozen] == [
        ", feature cache",
        ", feature cache [transformer]",
        ", no cache",
        ": ceiling, VED decoder alone",
    ]
    assert {row["part"] for row in rows} == set(PARTS) - {"memory"}
    for row in rows:
        if row["part"] != "quality":
            assert_ratios_of(row)
    assert all(len(row["ratios"]) == 2 for row in rows if row["part"] == "training")
    assert {score[0]["steps"] > 0 for score in scores.values()} == {True}
    assert fill["images"] == 8
    assert "ratio (median, range)" in format_table(rows)


@pytest.mark.parametrize("stage", list(STAGES))
def test_frozen_stages_train_the_same_parameters(bench, stage):
    run, _ = frozen_captioner(CAPTIONER, bench, bench.splits["train"], None, stage)
    ved = frozen_ved(bench, stage)
    # Both hold the same GPT2LMHeadModel as `decoder`: its trainable parameters must be the same ones by name.
    trained = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert trained == {n for n, p in ved.named_parameters() if p.requires_grad}
    assert all(n.startswith("decoder.") for n in trained) and not ved.encoder.training
    cross = {n for n in trained if ".crossattention." in n or ".ln_cross_attn." in n}
    assert cross and (trained == cross) == (stage == "cross_attention")


def test_cross_attention_stage_rows(bench):
    frozen, _ = frozen_rows(bench, repeats=1, images=8, batch_size=4, variants=False, stage="cross_attention")
    (pairs,) = pair_rows(bench, repeats=1, images=4, batch_size=10, stage="cross_attention")
    assert [row["row"].split("batch 4; cross-attention trains)")[1] for row in frozen] == [
        ", feature cache",
        ": ceiling, VED decoder alone",
    ]
    assert "cross-attention trains), feature cache + 5 captions per image" in pairs["row"]
    for row in [*frozen, pairs]:
        assert_ratios_of(row)


def test_training_memory(bench):
    parameters_mib = sum(p.numel() * p.element_size() for p in build_model(VED, bench).parameters()) / 2**20
    # Parameters, their gradients and AdamW's two moments are all live at the peak.
    peak_mib = tensor_peak_mib(bench, VED, batch_size=4)
    assert peak_mib > 3 * parameters_mib
    # What the operating system sees (rss_growth_mib), in a fresh process as the benchmark measures it: the steps' new
    # memory (at least the gradients and AdamW's moments, allocated at the first step) and not a runaway beyond the
    # tensors' peak.
    command = [sys.executable, str(ROOT / "bench" / "bench_vs_ved.py"), "--quick", "--device", "cpu"]
    completed = subprocess.run(
        [*command, "--memory_child", VED, "4"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    growth = float(completed.stdout.strip().splitlines()[-1])
    assert 2 * parameters_mib < growth < 20 * peak_mib + 200


def test_quick_settings():
    args = parse_args(["--quick", "--device", "cpu"])
    assert args.preset == "tiny" and args.argv == ["--quick", "--device", "cpu"]
