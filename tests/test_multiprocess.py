"""Several processes: `accelerate launch` with two CPU processes (DDP over gloo) trains the model one process trains
with the same global batch (even when one process's batch holds only undecodable images), captions every test image
exactly once, writes its files from the main process only and resumes mid-epoch exactly; the accelerate config files
in configs/accelerate/ load into the settings their comments promise."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from conftest import TINY
from dataset_files import write_truncated_jpeg
from safetensors.torch import load_file

import train
from captioning.data.synthetic import build_synthetic_splits, render_scene
from captioning.training.data import training_sampler
from captioning.training.models import prepare_for_strategy
from captioning.training.unfreezing import UnfreezingSchedule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
SIZES = (24, 13, 11)  # train, validation, test: odd evaluation splits, so two processes get unequal shares
RUN = [
    *TINY,
    "--dataset_format",
    "karpathy",
    "--num_train_epochs",
    "2",
    # The backbone stays frozen (in eval mode, so BatchNorm uses its running statistics whatever the batch), and
    # the decoder joins at epoch 1: DDP sees a group unfreeze mid-run.
    "--unfreeze_schedule",
    "bridge,cross_attention@0;decoder@1",
    "--per_device_eval_batch_size",
    "4",
    "--checkpointing_steps",
    "2",
    "--checkpoints_total_limit",
    "10",
]


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def make_scene_files(root: Path) -> Path:
    """Synthetic scenes as a Karpathy-format folder of JPEG files, with undecodable images where they hurt most: the
    two training images that make up process 1's whole first batch of epoch 0 (at 2 images per process), and one
    test image."""
    splits = build_synthetic_splits(seed=0, sizes=SIZES)
    epoch_0 = list(training_sampler(SIZES[0], seed=0))
    corrupt = {("train", epoch_0[2]), ("train", epoch_0[3]), ("test", 5)}
    (root / "images").mkdir(parents=True)
    entries = []
    for split, examples in splits.items():
        for index, example in enumerate(examples):
            name = f"{split}-{index:03d}.jpg"
            if (split, index) in corrupt:
                write_truncated_jpeg(root / "images" / name)
            else:
                render_scene(example.scene, 32).save(root / "images" / name)
            sentences = [{"raw": caption} for caption in example.captions]
            entries.append(
                {"filename": name, "split": {"validation": "val"}.get(split, split), "sentences": sentences}
            )
    (root / "dataset_scenes.json").write_text(json.dumps({"images": entries}))
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(*train_args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    """train.py under `accelerate launch` with the two-CPU-process config the README shows."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "cpu-2proc.yaml"),
        "--main_process_port",
        str(free_port()),
        str(ROOT / "train.py"),
        *train_args,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def losses(run: Path, step: int) -> list[float]:
    state = json.loads((run / "checkpoints" / f"step_{step}" / "training_state.json").read_text())
    return [record["loss"] for record in state["history"] if "loss" in record]


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    data = make_scene_files(tmp_path / "data")
    one, two = tmp_path / "one", tmp_path / "two"
    # Accelerate deals the batches of one shuffle in turn, so at 2 images per process a step holds the same 4 images
    # as one process's 4-image batch, and process 1 starts with the two undecodable ones.
    batches = BatchSampler(training_sampler(SIZES[0], seed=0), 2, drop_last=False)
    order = list(training_sampler(SIZES[0], seed=0))
    assert next(iter(BatchSamplerShard(batches, 2, 1))) == order[2:4]

    single = train.main(
        [*RUN, "--data_dir", str(data), "--per_device_train_batch_size", "4", "--output_dir", str(one)]
    )
    completed = launch(
        *RUN, "--cpu", "--data_dir", str(data), "--per_device_train_batch_size", "2", "--output_dir", str(two)
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "feature cache: off with 2 processes" in completed.stderr
    double = json.loads((two / "metrics.json").read_text())

    assert (single["num_processes"], double["num_processes"]) == (1, 2)
    assert single["global_train_batch_size"] == double["global_train_batch_size"] == 4
    assert single["optimizer_steps"] == double["optimizer_steps"] == 12  # 20 decodable images / 4, two epochs
    # Two undecodable training images, met once per epoch, counted once whichever process met them.
    assert single["images_dropped_while_training"] == double["images_dropped_while_training"] == 4
    # The same images per step, the loss a token mean over the whole step: the runs agree to float rounding.
    torch.testing.assert_close(losses(two, 12), losses(one, 12), rtol=1e-5, atol=1e-6)
    a = load_file(one / "checkpoints/step_12/model.safetensors")
    b = load_file(two / "checkpoints/step_12/model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    for name, value in single["test"].items():
        assert value == pytest.approx(double["test"][name], abs=1e-4), name
    # The per-image flags of captions cut at the length limit come back from both processes.
    assert set(double["test_diagnostics"]) == set(single["test_diagnostics"])
    assert "truncated" in double["test_diagnostics"]
    for name, value in single["test_diagnostics"].items():
        assert value == pytest.approx(double["test_diagnostics"][name], abs=1e-4), name
    assert single["best_validation_cider"] == pytest.approx(double["best_validation_cider"], abs=1e-4)

    # Every decodable test image exactly once, in dataset order, whatever the processes padded their shares with.
    rows = json.loads((two / "predictions.json").read_text())
    one_rows = json.loads((one / "predictions.json").read_text())
    assert [row["image_id"] for row in rows] == [row["image_id"] for row in one_rows]
    assert len(rows) == len({row["image_id"] for row in rows}) == SIZES[2] - 1
    assert double["num_images"] == SIZES[2] - 1 and double["images_dropped_at_test"] == 1
    # Files come from the main process only: the same folder as one process writes (less its feature cache), no
    # half-saved checkpoint, a random state per process in each checkpoint.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir() if p.name != "feature_cache")
    assert not list((two / "checkpoints").glob(".tmp_*"))
    assert {p.name for p in (two / "checkpoints/step_12").glob("random_states_*")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    # training_args.json holds the arguments as resolved, and repeats the run as a --config file.
    saved = json.loads((two / "training_args.json").read_text())
    assert saved["per_device_train_batch_size"] == 2 and saved["cpu"] and saved["mixed_precision"] == "no"
    repeated = vars(train.parse_args(["--config", str(two / "training_args.json")]))
    assert repeated == {**saved, "config": str(two / "training_args.json")}

    # Resumed from a checkpoint two steps into epoch 0, two processes end exactly where the straight run did (the
    # resumed loader starts epoch 1 with epoch 1's shuffle, not a replay of epoch 0's).
    resumed = tmp_path / "resumed"
    shutil.copytree(two / "checkpoints" / "step_2", resumed / "checkpoints" / "step_2")
    completed = launch(
        *RUN,
        "--cpu",
        "--data_dir",
        str(data),
        "--per_device_train_batch_size",
        "2",
        "--output_dir",
        str(resumed),
        "--resume_from_checkpoint",
        "latest",
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "resumed from" in completed.stderr
    c = load_file(resumed / "checkpoints/step_12/model.safetensors")
    assert all(torch.equal(b[name], c[name]) for name in b)
    assert losses(resumed, 12) == losses(two, 12)
    assert json.loads((resumed / "metrics.json").read_text())["test"] == double["test"]


@pytest.mark.slow
def test_processes_accelerate_did_not_join_refuse_to_train(tmp_path):
    # Without --cpu on a machine with no GPU, Accelerate leaves each launched process on its own.
    if torch.cuda.is_available():
        pytest.skip("with a GPU the processes are joined over NCCL")
    completed = launch("--preset", "tiny", "--synthetic_sizes", "8,4,4", "--output_dir", str(tmp_path), timeout=120)
    assert completed.returncode != 0
    assert "2 processes were launched but Accelerate joined none of them" in completed.stderr
    assert not (tmp_path / "training_args.json").exists()


def launch_settings(config: Path):
    """What `accelerate launch --config_file config` would run with: its arguments (and their names, before the
    launcher adds its own), and the environment it gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    parser = launch_command_parser()
    args, defaults, _ = _validate_launch_command(parser.parse_args(["--config_file", str(config), "train.py"]))
    names = set(vars(args))
    env = {}
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        env = prepare_deepspeed_cmd_env(args)[1]
    elif args.multi_gpu or args.use_fsdp:
        env = prepare_multi_gpu_env(args)
    return args, names, env


def test_accelerate_config_files_load_as_documented(tmp_path):
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    files = {path.name: path for path in CONFIGS.glob("*.yaml")}
    assert set(files) == {
        "cpu-2proc.yaml",
        "gpu-fp16.yaml",
        "multi-gpu.yaml",
        "multi-node.yaml",
        "fsdp.yaml",
        "deepspeed-zero2.yaml",
        "deepspeed-zero3.yaml",
    }
    # A key accelerate does not know (a typo inside fsdp_config, say) becomes an argument no launch option has.
    minimal = tmp_path / "minimal.yaml"
    minimal.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nmixed_precision: 'no'\n")
    known = set(vars(launch_command_parser().parse_args(["train.py"]))) | launch_settings(minimal)[1]
    settings = {}
    for name, path in files.items():
        args, names, env = launch_settings(path)
        assert names <= known, f"{name}: unknown keys {sorted(names - known)}"
        settings[name] = (args, names, env)

    args, _, _ = settings["cpu-2proc.yaml"]
    assert args.multi_gpu and args.num_processes == 2 and args.mixed_precision == "no"
    args, _, _ = settings["gpu-fp16.yaml"]
    assert not args.multi_gpu and args.num_processes == 1 and args.mixed_precision == "fp16"
    args, _, _ = settings["multi-gpu.yaml"]
    assert args.multi_gpu and args.num_machines == 1
    args, _, _ = settings["multi-node.yaml"]
    assert args.multi_gpu and (args.num_machines, args.num_processes) == (2, 16) and args.main_process_ip

    _, _, env = settings["fsdp.yaml"]
    with mock.patch.dict(os.environ, env):
        fsdp = FullyShardedDataParallelPlugin()
    assert fsdp.fsdp_version == 2 and fsdp.reshard_after_forward is True
    assert fsdp.transformer_cls_names_to_wrap == ["CaptionerEncoderLayer", "CaptionerDecoderLayer", "GPT2Block"]

    for name, stage in (("deepspeed-zero2.yaml", 2), ("deepspeed-zero3.yaml", 3)):
        _, _, env = settings[name]
        with mock.patch.dict(os.environ, env):
            deepspeed = DeepSpeedPlugin().deepspeed_config
        assert deepspeed["zero_optimization"]["stage"] == stage
        # "auto": DeepSpeed takes train.py's --gradient_accumulation_steps instead of overriding it.
        assert deepspeed["gradient_accumulation_steps"] == "auto"
    assert deepspeed["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]


@pytest.mark.parametrize("decoder", ["transformer", "gpt2"])
def test_fsdp_config_wraps_the_layers_each_model_has(decoder, tokenizer):
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from conftest import tiny_model

    model = tiny_model("resnet", decoder, tokenizer)
    with mock.patch.dict(os.environ, launch_settings(CONFIGS / "fsdp.yaml")[2]):
        plugin = FullyShardedDataParallelPlugin()
    accelerator = SimpleNamespace(
        distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin), num_processes=8
    )
    with pytest.raises(ValueError, match="Could not find the transformer layer class"):
        fsdp2_prepare_auto_wrap_policy(plugin, model)  # the shipped list, unfiltered
    prepare_for_strategy(accelerator, model, UnfreezingSchedule.default(False, False))
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = {type(module).__name__ for module in model.modules() if policy(module)}
    assert wrapped == {"CaptionerEncoderLayer", "GPT2Block" if decoder == "gpt2" else "CaptionerDecoderLayer"}

    plugin.fsdp_version = 1
    with pytest.raises(SystemExit, match="needs FSDP version 2"):
        prepare_for_strategy(accelerator, model, UnfreezingSchedule.default(False, False))


def test_deepspeed_takes_one_stage_schedules_only(tokenizer):
    from accelerate.utils import DistributedType
    from conftest import tiny_model

    model = tiny_model("resnet", "transformer", tokenizer)
    accelerator = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=8)
    with pytest.raises(SystemExit, match=r"DeepSpeed fixes which parameters train .* 2 stages"):
        prepare_for_strategy(accelerator, model, UnfreezingSchedule.parse("bridge@0;encoder,decoder@1"))
    # One stage: applied before DeepSpeed starts, so it sees the frozen backbone as frozen.
    prepare_for_strategy(accelerator, model, UnfreezingSchedule.parse("bridge,cross_attention,decoder@0"))
    assert not any(p.requires_grad for p in model.encoder.backbone.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
