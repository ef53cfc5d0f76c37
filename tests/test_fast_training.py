"""train.py's settings for fast steps on a GPU, checked on a CPU: no value read back from the device per step (only
at logging steps), fused AdamW where no GradScaler is involved, workers, pinned memory and channels-last on CUDA only,
and --torch_compile / --gradient_checkpointing runs that save, reload and resume like eager ones."""

import argparse
import collections
import json
import logging
import os
import shutil
import sys

import pytest
import torch
from conftest import TINY, reset_accelerator_state
from safetensors.torch import load_file
from transformers import AutoModel

import train
from captioning.training import models, setup
from captioning.training.final import final_evaluation
from captioning.training.unfreezing import adamw_implementation, build_adamw
from modeling_captioner import CaptionerConfig, CaptionerForConditionalGeneration

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")

# The ways a tensor's values come back to Python; on a GPU each one waits for all the work queued before it.
HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")
# Reads made outside the training step's own code: the data pipeline (host tensors, before any device), validation
# and test captioning, and the model's forward (in eager mode transformers' mask helpers look at a padding mask; the
# compiled forward cannot, and the model's fullgraph test covers it).
ELSEWHERE = (
    "torch/utils/data/",
    "accelerate/data_loader.py",
    "captioning/evaluation/command.py",
    "modeling_captioner/",
    "transformers/",
)


def count_step_reads(monkeypatch) -> collections.Counter:
    """Counts the host reads of tensors that train.main makes, by read and its caller's file and line; not those made
    from ELSEWHERE or from `final_evaluation` (the test split, after training)."""
    reads = collections.Counter()

    def counting(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            frame = sys._getframe(1)
            where = f"{name} at {frame.f_code.co_filename}:{frame.f_lineno}"
            while frame is not None:
                code = frame.f_code
                if code is final_evaluation.__code__ or any(part in code.co_filename for part in ELSEWHERE):
                    break
                if code is train.main.__code__:
                    reads[where] += 1
                    break
                frame = frame.f_back
            return original(self, *args, **kwargs)

        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    return reads


def assert_same_reads(longer_run: collections.Counter, shorter_run: collections.Counter) -> None:
    grown = longer_run - shorter_run
    assert longer_run == shorter_run, "reads that grow with the steps:\n" + "\n".join(
        f"{count:3d} {where}" for where, count in sorted(grown.items())
    )


TWO_STEPS = ("--max_train_steps", "2", "--checkpointing_steps", "1")


def tiny_run(output_dir, *extra: str, device: tuple[str, ...] = ("--cpu",)) -> dict:
    """A tiny from-scratch run (ResNet backbone) on 96 synthetic images: 6 steps of 16 images per epoch. On the CPU
    unless `device=()`: the runs below are compared step for step, which needs CPU determinism where a GPU is
    present too (CUDA's embedding backward adds atomically, in no fixed order)."""
    reset_accelerator_state()
    return train.main(
        [*TINY, "--output_dir", str(output_dir), "--synthetic_sizes", "96,4,4", "--num_beams", "1", *device, *extra]
    )


def history_losses(run, step: int) -> list[float]:
    state = json.loads((run / "checkpoints" / f"step_{step}" / "training_state.json").read_text())
    return [record["loss"] for record in state["history"] if "loss" in record]


def weights(run, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step_{step}" / "model.safetensors")


def test_training_steps_read_the_device_only_at_logging_steps(tmp_path, monkeypatch):
    """The loss stays on the device between logging steps and the token counts come from the collator (host numbers),
    so a step queues its work and goes on. 2 or 6 steps with one logging step read the same values in the same
    places; 6 steps logging every 2 read more (the counter does see the loop's reads)."""
    reads = count_step_reads(monkeypatch)
    runs = {}
    for name, steps, logging_steps in (("2 steps", 2, 2), ("6 steps", 6, 6), ("6 steps, 3 logs", 6, 2)):
        reads.clear()
        report = tiny_run(
            tmp_path / name.replace(" ", "_"), "--max_train_steps", str(steps), "--logging_steps", str(logging_steps)
        )
        assert report["optimizer_steps"] == steps
        runs[name] = collections.Counter(reads)
    assert_same_reads(runs["6 steps"], runs["2 steps"])
    assert runs["6 steps, 3 logs"].total() >= runs["6 steps"].total() + 2


@pytest.mark.gpu
def test_cuda_run_takes_the_fast_settings_and_reads_only_at_logging_steps(tmp_path, monkeypatch, caplog):
    """On a GPU with bf16 arithmetic, with every default (bf16, DataLoader workers, pinned memory and non-blocking
    copies, a channels-last ResNet, fused AdamW): 2 or 6 steps read the same values back from the device."""
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("fp16 with loss scaling: the GradScaler reads its overflow flag back at every step")
    caplog.set_level(logging.INFO, logger="train")
    reads = count_step_reads(monkeypatch)
    runs = []
    for steps in (2, 6):
        reads.clear()
        tiny_run(tmp_path / str(steps), "--max_train_steps", str(steps), "--logging_steps", str(steps), device=())
        runs.append(collections.Counter(reads))
    assert_same_reads(runs[1], runs[0])
    assert "mixed precision: bf16" in caplog.text and "AdamW: fused" in caplog.text
    assert "pinned memory and non-blocking copies on; channels_last on" in caplog.text
    assert "speed: 0 DataLoader" not in caplog.text


def test_adamw_is_fused_on_cuda_unless_a_grad_scaler_is_involved():
    """--optim's default, the fused AdamW, runs wherever the device has the kernel and no GradScaler is involved:
    bf16 (Accelerate has no scaler for it) and fp32 on CUDA; fp16's loss scaling takes torch's default."""
    assert train.parse_args([]).optim == "adamw_torch_fused"
    cuda = torch.device("cuda")  # the parameters stay on the CPU, which has the fused kernel too
    layer = torch.nn.Linear(4, 4)
    for loss_scaling, expected in ((False, "fused"), (True, "torch default")):
        optimizer = build_adamw(layer.parameters(), cuda, "adamw_torch_fused", loss_scaling=loss_scaling)
        assert adamw_implementation(optimizer) == expected
    assert adamw_implementation(build_adamw(layer.parameters(), cuda, "adamw_torch")) == "torch default"


@pytest.mark.parametrize("cuda", [False, True])
def test_workers_and_channels_last_follow_the_device(cuda, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    device = torch.device("cuda" if cuda else "cpu")
    args = train.parse_args(["--output_dir", str(tmp_path)])
    assert args.num_workers is None and setup.on_cuda(args) == cuda
    assert setup.default_num_workers(args, device, 1) == (8 if cuda else 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four GPU processes share the node's 16 cores
    assert setup.default_num_workers(args, device, 4) == (4 if cuda else 0)
    assert setup.default_num_workers(argparse.Namespace(**{**vars(args), "num_workers": 3}), device, 1) == 3
    for encoder, convolutional in (("resnet", True), ("vit", False)):
        model = CaptionerForConditionalGeneration(CaptionerConfig.from_preset("tiny", encoder=encoder))
        assert models.uses_channels_last(model, device) == (cuda and convolutional)
    with pytest.raises(SystemExit, match="needs --torch_compile"):
        train.parse_args(["--torch_compile_mode", "max-autotune"])
    with pytest.raises(SystemExit, match="0 or more"):
        train.parse_args(["--num_workers", "-1"])


def test_webdataset_gets_no_more_default_workers_than_training_shards(monkeypatch, tmp_path):
    """Each webdataset reader (process × worker) needs shard files of its own; the last shard is held out for
    validation and test unless both are given."""
    for i in range(4):
        (tmp_path / f"shard-{i}.tar").write_bytes(b"")
    args = argparse.Namespace(
        num_workers=None,
        dataset_format="webdataset",
        data_files=str(tmp_path / "shard-{0..3}.tar"),
        validation_files=None,
        test_files=None,
    )
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    cuda = torch.device("cuda")
    assert setup.default_num_workers(args, cuda, 1) == 3
    assert setup.default_num_workers(args, cuda, 2) == 1
    args.validation_files = args.test_files = "elsewhere.tar"
    assert setup.default_num_workers(args, cuda, 1) == 4


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory):
    """Two eager steps, checkpointed after each: what the runs below are compared with."""
    run = tmp_path_factory.mktemp("eager")
    tiny_run(run, *TWO_STEPS)
    return run


def assert_same_training(run, reference, exact: bool = False) -> None:
    """The loss history and the weights after step 2 of `run` are those of `reference` (to float rounding)."""
    assert history_losses(run, 2) == pytest.approx(history_losses(reference, 2), rel=0 if exact else 1e-5)
    a, b = weights(run, 2), weights(reference, 2)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0 if exact else 1e-4, atol=0 if exact else 1e-5, msg=name)


def test_channels_last_backbone_trains_saves_and_resumes(eager_run, tmp_path, monkeypatch, caplog):
    """What a CUDA run does with a convolutional backbone, forced on the CPU: the ResNet's weights and the images go
    channels-last. It trains like the NCHW run, and its checkpoints and saved folder (safetensors wants contiguous
    tensors) write, load and resume exactly."""
    monkeypatch.setattr(models, "uses_channels_last", lambda model, device: True)
    caplog.set_level(logging.INFO, logger="train")
    tiny_run(tmp_path / "nhwc", *TWO_STEPS)
    assert "channels_last on" in caplog.text
    assert_same_training(tmp_path / "nhwc", eager_run)
    assert AutoModel.from_pretrained(tmp_path / "nhwc").config.vision_config.model_type == "resnet"
    shutil.copytree(tmp_path / "nhwc" / "checkpoints" / "step_1", tmp_path / "resumed" / "checkpoints" / "step_1")
    tiny_run(tmp_path / "resumed", *TWO_STEPS, "--resume_from_checkpoint", "latest")
    assert_same_training(tmp_path / "resumed", tmp_path / "nhwc", exact=True)


def test_torch_compile_trains_like_eager_saves_and_resumes_without_it(eager_run, tmp_path):
    """--torch_compile (with the aot_eager backend: dynamo's capture and AOTAutograd's joint graph, without
    inductor's minute of C++ compilation on two cores): the model's forward is one graph, the steps' losses and
    weights are the eager run's, and the checkpoints and saved folder have the eager parameter names, so the run
    resumes without the flag."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = tmp_path / "compiled"
    tiny_run(compiled, *TWO_STEPS, "--torch_compile", "--torch_compile_backend", "aot_eager")
    assert not counters["graph_break"], f"graph breaks in the model's forward: {dict(counters['graph_break'])}"
    assert counters["stats"]["unique_graphs"] >= 1
    assert_same_training(compiled, eager_run)
    assert AutoModel.from_pretrained(compiled).config.model_type == "captioner"
    shutil.copytree(compiled / "checkpoints" / "step_1", tmp_path / "resumed" / "checkpoints" / "step_1")
    tiny_run(tmp_path / "resumed", *TWO_STEPS, "--resume_from_checkpoint", "latest")
    assert_same_training(tmp_path / "resumed", compiled)
    torch._dynamo.reset()


def test_gradient_checkpointing_recomputes_layers_with_the_same_losses(eager_run, tmp_path, monkeypatch):
    """--gradient_checkpointing: every checkpointing layer runs its forward again in the backward pass, and the two
    steps end with the eager run's losses and weights."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers, calls = collections.Counter(), collections.Counter()
    enable = models.enable_gradient_checkpointing

    def enable_and_count(model):
        enable(model)
        for module in model.modules():
            if isinstance(module, GradientCheckpointingLayer):
                name = type(module).__name__
                layers[name] += 1

                def count(part, args, output, name=name):
                    calls[name] += part.training  # not in validation's and the test's generate() (eval mode)

                # On the layer's first part: hooks of the layer itself stay outside the checkpoint and run once.
                next(module.children()).register_forward_hook(count)

    monkeypatch.setattr(models, "enable_gradient_checkpointing", enable_and_count)
    tiny_run(tmp_path / "checkpointed", *TWO_STEPS, "--gradient_checkpointing")
    assert layers["CaptionerDecoderLayer"] > 0, f"no decoder layer checkpoints: {dict(layers)}"
    # Two steps, each running every layer twice: in the forward pass, and again in the backward.
    assert calls == {name: 2 * 2 * count for name, count in layers.items()}
    assert_same_training(tmp_path / "checkpointed", eager_run, exact=True)
