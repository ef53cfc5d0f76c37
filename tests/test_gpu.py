"""On a CUDA GPU (skipped elsewhere; `pytest -m gpu`): train.py in fp16 and bf16, generate() in fp16/bf16 giving the
fp32 captions of a trained tiny model, the caption command with --device cuda --dtype bfloat16 giving the fp32 CPU
captions, and the static-cache compiled decoding path giving the eager ids for greedy, beam and seeded sampling."""

import copy
import json
import logging
import subprocess
import sys

import pytest
import torch
from conftest import TINY, checkout_env, scene_images, tiny_model

import train
from captioning.cli import main as cli
from captioning.fast_decoding import enable_fast_decoding, warm_up
from modeling_captioner import CaptionerProcessor, build_image_processor

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("fresh_accelerator_state")]
CUDA = torch.device("cuda")


# ---------------------------------------------------------------------------------------------------------------
# train.py on CUDA
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp16", "bf16", None])
def test_train_py_trains_on_cuda_and_logs_its_precision(precision, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="train")
    if precision is None:  # the default: bf16 where the GPU has bf16 arithmetic, fp16 with loss scaling elsewhere
        expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        flags, chosen_by = ["--max_train_steps", "2"], "the default on this device"
    else:
        expected, flags, chosen_by = precision, ["--mixed_precision", precision], "--mixed_precision"
    torch.cuda.reset_peak_memory_stats()
    report = train.main(
        [*TINY, "--output_dir", str(tmp_path), "--synthetic_sizes", "64,16,16", "--num_train_epochs", "2", *flags]
    )
    assert f"mixed precision: {expected} ({chosen_by}" in caplog.text
    assert torch.cuda.max_memory_allocated() > 0, "nothing ran on the GPU"
    assert report["optimizer_steps"] == (2 if precision is None else 8)  # 64 images, batch 16, 2 epochs
    assert report["test"]["CIDEr-D"] >= 0
    if precision is not None:
        state = json.loads((tmp_path / "checkpoints" / "step_8" / "training_state.json").read_text())
        losses = [record["loss"] for record in state["history"] if "loss" in record]
        assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
        assert losses[-1] < losses[0], losses


# ---------------------------------------------------------------------------------------------------------------
# A tiny model trained on eight scenes until it knows their captions (its predictions are confident)
# ---------------------------------------------------------------------------------------------------------------


def overfit(encoder: str, decoder: str, tokenizer) -> dict:
    """tests/test_overfit.py's recipe on the GPU, in fp32: eight scenes, AdamW 3e-3, until the loss is below 0.02
    (checked every 50 steps, at most 400)."""
    model = tiny_model(encoder, decoder, tokenizer).to(CUDA).train()
    processor = CaptionerProcessor(build_image_processor(model.config), tokenizer)
    images, captions = scene_images(8)
    batch = {name: value.to(CUDA) for name, value in processor(images=images, text_target=captions).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(1, 401):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0 and loss.item() < 0.02:
            break
    model.eval()
    pixel_values = batch["pixel_values"]
    with torch.inference_mode():
        learnt = processor.batch_decode(model.generate(pixel_values, max_new_tokens=12), skip_special_tokens=True)
    assert learnt == captions, f"the tiny model did not learn its eight captions (loss {loss.item():.3f})"
    return {"model": model, "processor": processor, "pixel_values": pixel_values, "images": images}


@pytest.fixture(scope="module")
def trained(tokenizer):
    models = {}

    def get(encoder: str, decoder: str) -> dict:
        if (encoder, decoder) not in models:
            models[encoder, decoder] = overfit(encoder, decoder, tokenizer)
        return models[encoder, decoder]

    return get


PAIRS = [("resnet", "transformer"), ("vit", "gpt2"), ("vit", "transformer"), ("resnet", "gpt2")]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("pair", PAIRS, ids=[f"{e}-{d}" for e, d in PAIRS])
def test_half_precision_generate_gives_the_fp32_captions(pair, dtype, trained):
    """No id may differ: the model was trained to a loss under 0.02 on these images, so each step's top token leads
    the next by several nats, far beyond what fp16's or bf16's rounding (0.05% and 0.4% of a logit) can move."""
    run = trained(*pair)
    half = copy.deepcopy(run["model"]).to(dtype)
    for kwargs in ({"num_beams": 1}, {"num_beams": 3}):
        with torch.inference_mode():
            expected = run["model"].generate(run["pixel_values"], max_new_tokens=12, **kwargs)
            ids = half.generate(run["pixel_values"].to(dtype), max_new_tokens=12, **kwargs)
        decode = run["processor"].batch_decode
        assert torch.equal(ids, expected), (kwargs, decode(ids, skip_special_tokens=True))


# ---------------------------------------------------------------------------------------------------------------
# The caption command
# ---------------------------------------------------------------------------------------------------------------


def test_caption_command_in_bf16_on_cuda_gives_the_fp32_cpu_captions(trained, tmp_path, capsys):
    run = trained("resnet", "transformer")
    folder, images = tmp_path / "model", tmp_path / "images"
    model = copy.deepcopy(run["model"]).cpu()
    model.save_pretrained(folder)
    run["processor"].save_pretrained(folder)
    images.mkdir()
    for index, image in enumerate(run["images"]):
        image.save(images / f"scene{index}.png")
    command = ["caption", str(images), "--model", str(folder), "--batch_size", "4", "--format", "jsonl"]

    assert cli.main([*command, "--device", "cpu", "-q"]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # As a user runs it without `pip install -e`: the package on PYTHONPATH, no console script.
    env = checkout_env()
    completed = subprocess.run(
        [sys.executable, "-m", "captioning.cli", *command, "--device", "cuda", "--dtype", "bfloat16"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    captions = [json.loads(line) for line in completed.stdout.splitlines()]
    assert len(captions) == 8 and all(row["caption"] for row in captions)
    assert captions == expected


# ---------------------------------------------------------------------------------------------------------------
# Static cache + compiled decoding step
# ---------------------------------------------------------------------------------------------------------------

DECODING = {
    "greedy": {},
    "beam-3": {"num_beams": 3},
    "sampling": {"do_sample": True, "temperature": 1.5, "top_k": 0},
}


@pytest.mark.parametrize("pair", PAIRS[:2], ids=[f"{e}-{d}" for e, d in PAIRS[:2]])
def test_compiled_static_cache_decoding_gives_the_eager_ids(pair, trained):
    run = trained(*pair)
    eager, fast = run["model"], copy.deepcopy(run["model"])
    assert enable_fast_decoding(fast)  # transformers' default compile mode on a GPU: reduce-overhead (CUDA graphs)
    pixel_values = run["pixel_values"]
    for name, kwargs in DECODING.items():
        kwargs = {**kwargs, "max_new_tokens": 12}
        warm_up(fast, pixel_values, **kwargs)
        with torch.inference_mode():
            torch.manual_seed(0)
            expected = eager.generate(pixel_values, **kwargs)
            torch.manual_seed(0)
            ids = fast.generate(pixel_values, **kwargs)
        assert torch.equal(ids, expected), name
    assert hasattr(fast, "_compiled_call"), "generate() never took the compiled path"
