"""train.py end to end on tiny runs: every dataset format, the frozen stage with its feature cache, bad flags, and a
run killed with SIGKILL and resumed that ends exactly like an uninterrupted one."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from dataset_files import make_coco, make_kaggle_flickr8k
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

import train
from captioning.data import load_splits_from_args
from captioning.evaluation import command as captioning_evaluation
from captioning.evaluation.diagnostics import DIAGNOSTICS, caption_diagnostics
from captioning.evaluation.metrics import compute_caption_metrics
from captioning.training import setup

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def run_train(*extra: str) -> dict:
    return train.main([*TINY, *extra])


def assert_diagnostics_of(diagnostics: dict, rows: list[dict]) -> None:
    """`diagnostics` are those of the captions and references in predictions.json `rows`, with a truncated share."""
    captions = {row["image_id"]: row["caption"] for row in rows}
    expected = caption_diagnostics(captions, {row["image_id"]: row["references"] for row in rows})
    assert {k: v for k, v in diagnostics.items() if k != "truncated"} == expected
    assert diagnostics["truncated"] in {count / len(rows) for count in range(len(rows) + 1)}


def test_dry_run_prints_trainable_parameters_per_stage(tmp_path, capsys):
    run_train(
        "--output_dir",
        str(tmp_path),
        "--synthetic_sizes",
        "32,8,8",
        "--dry_run",
        "--unfreeze_schedule",
        "bridge,cross_attention@0;decoder@1;encoder@2",
    )
    printed = capsys.readouterr().out
    assert "stage 1 from epoch 0" in printed and "stage 3 from epoch 2" in printed
    assert "frozen: encoder, decoder" in printed and "(lr ×0.1)" in printed
    assert not (tmp_path / "model.safetensors").exists()


def test_synthetic_run_writes_a_complete_model_folder(tmp_path):
    # The one tiny run with METEOR's Java scorer and TensorBoard logging, both on by default.
    report = train.main(
        [
            *[f for f in TINY if f not in ("--no_meteor", "--no-with_tracking")],
            "--output_dir",
            str(tmp_path),
            "--synthetic_sizes",
            "48,16,16",
            "--num_train_epochs",
            "2",
            "--unfreeze_schedule",
            "bridge,cross_attention,decoder@0;encoder@1",
        ]
    )
    for name in (
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "processor_config.json",
        "metrics.json",
        "predictions.json",
        "samples.png",
        "training_curves.png",
    ):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == report and metrics["num_images"] == 16
    assert set(metrics["test"]) >= {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D", "METEOR"}
    if shutil.which("java"):
        assert isinstance(metrics["test"]["METEOR"], float)
    assert metrics["human_agreement"]["CIDEr-D"] > 0
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    assert len(predictions) == 16 and all(len(row["references"]) == 5 for row in predictions)
    # Degeneration diagnostics of the test captions beside the references', outside "test" (the model-index's scores).
    assert_diagnostics_of(metrics["test_diagnostics"], predictions)
    model = AutoModel.from_pretrained(tmp_path)
    assert model.generation_config.num_beams == 2 and model.generation_config.length_penalty == 0.6
    assert type(AutoProcessor.from_pretrained(tmp_path)).__name__ == "CaptionerProcessor"
    # The evaluation command scores the saved folder on a split and writes what it scored.
    evaluation = captioning_evaluation.main(
        [
            "--model",
            str(tmp_path),
            "--synthetic_sizes",
            "48,16,16",
            "--split",
            "validation",
            "--num_beams",
            "1",
            "--output_dir",
            str(tmp_path / "eval"),
        ]
    )
    rows = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert len(rows) == 16 and json.loads((tmp_path / "eval" / "metrics.json").read_text()) == evaluation
    rescored = compute_caption_metrics(
        {r["image_id"]: r["caption"] for r in rows}, {r["image_id"]: r["references"] for r in rows}, meteor=False
    )
    assert rescored["CIDEr-D"] == pytest.approx(evaluation["metrics"]["CIDEr-D"], abs=1e-9)
    assert_diagnostics_of(evaluation["diagnostics"], rows)
    with pytest.raises(SystemExit, match="needs --data_dir"):
        captioning_evaluation.main(["--model", str(tmp_path), "--dataset_format", "coco", "--output_dir", "x"])
    # Tracking is on by default: TensorBoard event files with the training loss and validation CIDEr-D / METEOR.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(tmp_path.glob("**/events.out.tfevents.*"))
    assert events, "no TensorBoard log"
    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert "train/loss" in tags and "validation/CIDEr-D" in tags and "validation/METEOR" in tags
    for name in DIAGNOSTICS:
        assert f"validation/{name}" in tags, name
        assert f"validation/references/{name}" in tags or name == "truncated", name
    # Epoch 0 trained with the backbone frozen: every training image's features went through the cache.
    caches = list((tmp_path / "feature_cache").glob("*/filled.npy"))
    assert len(caches) == 1
    assert np.load(caches[0]).all()


def test_default_schedule_trains_everything_from_scratch(tmp_path, capsys):
    run_train("--output_dir", str(tmp_path), "--synthetic_sizes", "16,8,8", "--dry_run")
    printed = capsys.readouterr().out
    assert printed.count("stage ") == 1 and "frozen" not in printed


@pytest.mark.parametrize("dataset_format", ["flickr8k", "coco", "hf"])
def test_file_formats_train(dataset_format, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if dataset_format == "flickr8k":
        make_kaggle_flickr8k(data_dir, good=24)
    elif dataset_format == "coco":
        make_coco(data_dir)
    else:
        from PIL import Image

        rows = []
        for i in range(12):
            Image.new("RGB", (20, 16), (20 * i, 100, 200 - 10 * i)).save(data_dir / f"img{i}.png")
            rows.append({"file_name": f"img{i}.png", "caption": f"a picture number {i} of a coloured square"})
        (data_dir / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    output = tmp_path / "out"
    report = run_train(
        "--dataset_format",
        dataset_format,
        "--data_dir",
        str(data_dir),
        "--output_dir",
        str(output),
        "--max_train_steps",
        "2",
    )
    assert report["optimizer_steps"] == 2
    assert AutoModel.from_pretrained(output).config.model_type == "captioner"
    assert json.loads((output / "predictions.json").read_text())


def test_greedy_run_saves_a_valid_generation_config(tmp_path):
    """--num_beams 1 with the default --length_penalty 0.6: no length normalisation without beams, so 1 is saved
    and reported (transformers refuses to save a length_penalty without beams)."""
    report = run_train(
        "--output_dir", str(tmp_path), "--synthetic_sizes", "16,4,4", "--max_train_steps", "1", "--num_beams", "1"
    )
    assert report["generation"] == {
        "num_beams": 1,
        "length_penalty": 1.0,
        "max_new_tokens": 12,
        "no_repeat_ngram_size": 3,
        "repetition_penalty": 1.0,
    }
    generation = AutoModel.from_pretrained(tmp_path).generation_config
    assert generation.num_beams == 1 and generation.length_penalty == 1.0


def test_several_captions_per_image_train_from_the_feature_cache(tmp_path):
    """--captions_per_image 5: every reference of each image in one batch (batch sizes count images), the frozen
    backbone's features read once per image from the cache in epoch 1; the same run as 5 copies of each image would
    take the same number of steps. Bad combinations are refused before anything loads."""
    report = run_train(
        "--output_dir",
        str(tmp_path),
        "--synthetic_sizes",
        "32,8,8",
        "--num_train_epochs",
        "2",
        "--captions_per_image",
        "5",
        "--unfreeze_schedule",
        "bridge,cross_attention,decoder@0;encoder@2",
    )
    assert report["optimizer_steps"] == 4  # 32 images / 16 per batch × 2 epochs
    assert np.load(next((tmp_path / "feature_cache").glob("*/filled.npy"))).all()
    assert json.loads((tmp_path / "training_args.json").read_text())["captions_per_image"] == 5
    with pytest.raises(SystemExit, match="--captions_per_image 6: some training images have only 5 reference"):
        run_train("--output_dir", str(tmp_path / "x"), "--synthetic_sizes", "16,4,4", "--captions_per_image", "6")
    with pytest.raises(SystemExit, match="--all_pairs makes one item per pair"):
        run_train("--output_dir", str(tmp_path / "y"), "--captions_per_image", "2", "--all_pairs")
    with pytest.raises(SystemExit, match="at least 1"):
        run_train("--output_dir", str(tmp_path / "z"), "--captions_per_image", "0")


def test_karpathy_format_trains(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    entries = []
    for i, split in enumerate(["train"] * 8 + ["val"] * 3 + ["test"] * 3):
        Image.new("RGB", (20, 16), (15 * i, 90, 30)).save(images / f"{i}.jpg")
        entries.append(
            {
                "filename": f"{i}.jpg",
                "split": split,
                "sentences": [{"raw": f"a red and green block {i}"}, {"raw": f"block number {i}"}],
            }
        )
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": entries}))
    report = run_train(
        "--dataset_format",
        "karpathy",
        "--data_dir",
        str(tmp_path),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_train_steps",
        "1",
    )
    assert report["num_images"] == 3


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dataset_format", "flickr8k"], "needs --data_dir"),
        (["--mixed_precision", "fp16"], "fp16 needs a GPU"),
        (["--checkpointing_steps", "often"], "integer or 'epoch'"),
        (["--synthetic_sizes", "10,0,5"], "three positive integers"),
        (["--per_device_train_batch_size", "0"], "at least 1"),
        (["--no_repeat_ngram_size", "-1"], "no_repeat_ngram_size must be >= 0"),
        (["--dataset_format", "coco", "--data_dir", "coco", "--synthetic_variant", "hard"], "built-in synthetic set"),
        (["--repetition_penalty", "0"], "repetition_penalty > 0"),
    ],
)
def test_bad_flags_are_clear_errors(flags, message, tmp_path):
    if "fp16" in flags and torch.cuda.is_available():
        pytest.skip("fp16 is allowed with a GPU")
    with pytest.raises(SystemExit, match=message):
        train.parse_args([*flags, "--output_dir", str(tmp_path)])


def test_hard_scenes_and_decoding_settings_reach_the_saved_model(tmp_path, capsys):
    """--synthetic_variant hard trains on the hard scenes; n-gram blocking, the repetition penalty and the length
    limit ('auto': the longest training caption and its EOS) are saved in the generation config and metrics.json."""
    report = run_train(
        "--output_dir",
        str(tmp_path),
        "--synthetic_variant",
        "hard",
        "--synthetic_sizes",
        "16,4,4",
        "--max_train_steps",
        "1",
        "--no_repeat_ngram_size",
        "3",
        "--repetition_penalty",
        "1.1",
        "--max_new_tokens",
        "auto",
    )
    processor = AutoProcessor.from_pretrained(tmp_path)
    train_captions = load_splits_from_args(
        train.parse_args(["--synthetic_variant", "hard", "--synthetic_sizes", "16,4,4"])
    )["train"].all_captions()
    longest = max(len(processor.tokenizer(c, add_special_tokens=False).input_ids) for c in train_captions)
    # The caption and its EOS, within the positions the start token leaves (the tiny preset has 32).
    limit = min(longest + 1, AutoModel.from_pretrained(tmp_path).config.max_position_embeddings - 1)
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["max_length"] == limit + 1  # the start token and the caption
    assert generation["no_repeat_ngram_size"] == 3 and generation["repetition_penalty"] == 1.1
    assert report["generation"] == {
        "num_beams": 2,
        "length_penalty": 0.6,
        "max_new_tokens": limit,
        "no_repeat_ngram_size": 3,
        "repetition_penalty": 1.1,
    }
    assert report["human_agreement"]["CIDEr-D"] > 0 and report["num_images"] == 4
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    assert predictions[0]["image_id"].startswith("synthetic-hard-test-")
    with pytest.raises(SystemExit) as exit:
        train.parse_args(["--max_new_tokens", "many"])
    assert exit.value.code == 2
    assert "expected a positive number of tokens or 'auto', got 'many'" in capsys.readouterr().err


def test_config_file_supplies_arguments(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("num_train_epochs: 3\nlearning_rate: 0.002\nlabel_smoothing: 0.0\n")
    args = train.parse_args(["--config", str(config), "--learning_rate", "0.005"])
    assert (args.num_train_epochs, args.learning_rate, args.label_smoothing) == (3, 0.005, 0.0)
    (tmp_path / "bad.json").write_text(json.dumps({"num_epochs": 3}))
    with pytest.raises(SystemExit, match=r"unknown argument\(s\) \['num_epochs'\]"):
        train.parse_args(["--config", str(tmp_path / "bad.json")])


def resume_command(output_dir: Path, *extra: str) -> list[str]:
    # On the CPU even where a GPU is present: a resumed run is compared bit for bit, and CUDA's embedding backward
    # (atomic adds) is not deterministic.
    return [
        sys.executable,
        str(ROOT / "train.py"),
        *TINY,
        "--cpu",
        "--output_dir",
        str(output_dir),
        "--synthetic_sizes",
        "96,16,16",
        "--num_train_epochs",
        "2",
        "--checkpointing_steps",
        "2",
        "--checkpoints_total_limit",
        "10",
        "--unfreeze_schedule",
        "bridge,cross_attention,decoder@0;encoder@1",
        *extra,
    ]


def test_sigkill_and_resume_ends_like_an_uninterrupted_run(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    subprocess.run(resume_command(straight), check=True, env=env, capture_output=True, timeout=300)

    process = subprocess.Popen(resume_command(resumed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (resumed / "checkpoints" / "step_4").is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-training"
    checkpoints = sorted(p.name for p in (resumed / "checkpoints").glob("step_*"))
    assert "step_12" not in checkpoints and not (resumed / "metrics.json").exists()
    state = json.loads((resumed / "checkpoints" / "step_4" / "training_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"]) == (0, 4)

    completed = subprocess.run(
        resume_command(resumed, "--resume_from_checkpoint", "latest"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "resumed from" in completed.stderr
    straight_metrics = json.loads((straight / "metrics.json").read_text())
    resumed_metrics = json.loads((resumed / "metrics.json").read_text())
    for key in ("test", "best_validation_cider", "optimizer_steps"):
        assert resumed_metrics[key] == straight_metrics[key], key
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The final weights, not only the best ones: a resumed run must also replay later epochs in their own order.
    last_a, last_b = (load_file(run / "checkpoints" / "step_12" / "model.safetensors") for run in (straight, resumed))
    assert last_a.keys() == last_b.keys() and all(torch.equal(last_a[k], last_b[k]) for k in last_a)
    # The resumed run went on in the right stage: its last checkpoint trained the encoder (stage 2, epoch 1).
    last = json.loads((resumed / "checkpoints" / "step_12" / "training_state.json").read_text())
    assert last["epoch"] == 2 and any(h.get("stage") == 2 for h in last["history"])


def test_bf16_mixed_precision_on_cpu(tmp_path):
    report = run_train(
        "--output_dir",
        str(tmp_path),
        "--synthetic_sizes",
        "32,8,8",
        "--max_train_steps",
        "2",
        "--mixed_precision",
        "bf16",
    )
    assert report["optimizer_steps"] == 2
    # Autocast computes in bf16; the weights stay float32 in the saved folder.
    assert AutoModel.from_pretrained(tmp_path).dtype == torch.float32


def test_pretrained_parts_get_the_staged_default_schedule(tmp_path, capsys, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel, ResNetConfig, ResNetModel

    resnet = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
    ResNetModel(resnet).save_pretrained(tmp_path / "resnet")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    gpt2 = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=32, vocab_size=len(tokenizer))
    GPT2LMHeadModel(gpt2).save_pretrained(tmp_path / "gpt2")

    run_train(
        "--output_dir",
        str(tmp_path / "dry"),
        "--synthetic_sizes",
        "16,8,8",
        "--dry_run",
        "--encoder",
        str(tmp_path / "resnet"),
        "--decoder",
        str(tmp_path / "gpt2"),
        "--tokenizer",
        str(tmp_path / "tokenizer"),
    )
    printed = capsys.readouterr().out
    assert "stage 1 from epoch 0" in printed and "frozen: encoder, decoder" in printed
    assert "stage 3 from epoch 2" in printed and "encoder 21,584 (lr ×0.1)" in printed

    # A pretrained backbone with the preset's from-scratch decoder: the backbone is frozen for epoch 0 and its
    # features come from the cache from then on.
    output = tmp_path / "run"
    report = run_train(
        "--output_dir",
        str(output),
        "--synthetic_sizes",
        "32,8,8",
        "--num_train_epochs",
        "1",
        "--encoder",
        str(tmp_path / "resnet"),
    )
    assert report["optimizer_steps"] == 2
    model = AutoModel.from_pretrained(output)
    assert (
        model.config.d_model == 32 and model.config.decoder_attention_heads == 2 and model.config.encoder_ffn_dim == 64
    )
    reference = ResNetModel.from_pretrained(tmp_path / "resnet").state_dict()
    for name, tensor in model.encoder.backbone.state_dict().items():
        if "num_batches_tracked" not in name:
            torch.testing.assert_close(tensor, reference[name], atol=0, rtol=0, msg=f"frozen {name} changed")
    assert list((output / "feature_cache").glob("*/features.npy"))


def test_lstm_decoder_trains_with_its_attention_penalty(tmp_path):
    report = run_train(
        "--output_dir",
        str(tmp_path),
        "--synthetic_sizes",
        "32,8,8",
        "--max_train_steps",
        "2",
        "--decoder",
        "lstm",
        "--unfreeze_schedule",
        "bridge,cross_attention,decoder@0;encoder@1",
    )
    assert report["optimizer_steps"] == 2
    model = AutoModel.from_pretrained(tmp_path)
    assert model.config.decoder_type == "lstm" and model.config.attention == "bahdanau"


def test_wall_clock_budget_stops_training_and_still_scores(tmp_path):
    report = run_train(
        "--output_dir",
        str(tmp_path),
        "--synthetic_sizes",
        "64,8,8",
        "--num_train_epochs",
        "50",
        "--max_train_minutes",
        "0.0001",
    )
    assert report["optimizer_steps"] == 1  # the budget is checked after every optimizer step
    # Scored all the same: the test numbers are those of the saved predictions, on every test image.
    assert (tmp_path / "model.safetensors").is_file() and report["num_images"] == 8
    rows = json.loads((tmp_path / "predictions.json").read_text())
    rescored = compute_caption_metrics(
        {row["image_id"]: row["caption"] for row in rows},
        {row["image_id"]: row["references"] for row in rows},
        meteor=False,
    )
    assert rescored["CIDEr-D"] == pytest.approx(report["test"]["CIDEr-D"], abs=1e-12)
    with pytest.raises(SystemExit, match="must be positive"):
        train.parse_args(["--max_train_minutes", "0"])


@pytest.mark.parametrize(
    ("flag", "env", "cuda", "bf16", "expected"),
    [
        ("fp16", None, True, True, "fp16"),  # the flag wins
        (None, "fp16", True, True, None),  # accelerate launch's config: Accelerate reads it
        (None, None, True, True, "bf16"),  # a GPU with bf16 arithmetic
        (None, None, True, False, "fp16"),  # an older GPU: fp16 with loss scaling
        (None, None, False, False, "no"),  # a CPU
    ],
)
def test_mixed_precision_defaults_to_what_the_device_does_well(flag, env, cuda, bf16, expected, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    if env is not None:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 and not including_emulation
    )
    args = argparse.Namespace(mixed_precision=flag, cpu=False)
    assert setup.default_mixed_precision(args) == expected
    assert setup.default_mixed_precision(argparse.Namespace(mixed_precision=None, cpu=True)) in (None, "no")
