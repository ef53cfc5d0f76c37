"""Train a captioner with Accelerate (CPU, one GPU, many GPUs, many nodes): data → model → staged unfreezing → AdamW →
checkpoints (resume-exact) → validation CIDEr-D each epoch → the best model folder, test metrics, predictions and
pictures. `accelerate launch --config_file configs/accelerate/<setup>.yaml train.py ...` runs it on several processes;
the global batch is per_device_train_batch_size × processes × gradient_accumulation_steps."""

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import PIL.Image
import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    DistributedType,
    broadcast_object_list,
    get_int_from_env,
    set_seed,
)
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_scheduler

from captioning.data import CaptionPairs, add_data_arguments, check_data_arguments, load_splits_from_args
from captioning.data.web.splits import STREAM_FORMATS
from captioning.data.web.streams import StreamCollator, StreamLoader, StreamProgress, format_report, sum_reports
from captioning.evaluation.command import generate_captions, write_predictions
from captioning.evaluation.diagnostics import caption_diagnostics, format_diagnostics
from captioning.training.augmentation import FLIP_MODES, SCHEDULE_KINDS, AugmentationSchedule, ImageAugmentation
from captioning.training.collator import CaptionCollator
from captioning.training.feature_cache import FeatureCache, cache_key, cached_vision_features
from captioning.training.losses import caption_loss
from captioning.training.time_budget import PLANNED_SCHEDULES, PlannedDecay, TimeBudget
from captioning.training.unfreezing import (
    GROUPS,
    OPTIMIZERS,
    UnfreezingSchedule,
    adamw_implementation,
    build_adamw,
    optimizer_groups,
    train_mode,
)
from modeling_captioner import (
    DECODER_TYPES,
    PRESETS,
    CaptionerConfig,
    CaptionerForConditionalGeneration,
    CaptionerProcessor,
    build_image_processor,
)
from tokenization import build_tokenizer

logger = logging.getLogger("train")
SCHEDULERS = ("inverse_sqrt", "cosine", "linear", "constant", "constant_with_warmup")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    data = parser.add_argument_group("data")
    add_data_arguments(data)
    data.add_argument("--all_pairs", action="store_true", help="One item per image–caption pair, not per image.")
    data.add_argument(
        "--captions_per_image",
        type=int,
        default=1,
        help="References trained on per image and epoch, in one batch (batch sizes count images): the image's "
        "encoder, feature-cache read and cross-attention keys/values serve all of them (seq_per_img).",
    )
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--max_eval_samples", type=int, default=None, help="Validation images scored per epoch.")
    data.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="DataLoader worker processes (training, validation and test). Default: on a GPU min(8, CPU cores per "
        "process), for webdataset no more than the training shard files per process (each worker reads files of its "
        "own); on a CPU 0, since workers would take the cores the training step runs on.",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--preset",
        default="small-128",
        choices=sorted(PRESETS),
        help="Sizes of the model (and of its bridge and decoder with a pretrained --encoder). small-128: the "
        "from-scratch default, 128×128 images; small: the same at 64×64.",
    )
    model.add_argument(
        "--encoder", default=None, help="'resnet' or 'vit' (random), or a pretrained vision model id/path."
    )
    model.add_argument(
        "--decoder",
        default=None,
        help="'transformer', 'gpt2' or 'lstm' (the preset's, random), or a pretrained GPT-2 id/path such as "
        "openai-community/gpt2 (with a pretrained --encoder).",
    )
    model.add_argument("--model_name_or_path", default=None, help="Continue from a saved captioner folder.")
    model.add_argument(
        "--tokenizer", default=None, help="Tokenizer folder or hub id; default: built from the captions."
    )
    model.add_argument("--vocab_size", type=int, default=15000, help="Size of a tokenizer built from the captions.")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--num_train_epochs", type=int, default=12)
    optim.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    optim.add_argument(
        "--max_train_minutes",
        type=float,
        default=None,
        help="Train for this much wall-clock time, validation included (then score the test split). The run plans "
        "its steps from the measured step and validation times, so a cosine or linear decay ends at the budget; the "
        "epoch or step limit still applies if it comes first.",
    )
    optim.add_argument(
        "--per_device_train_batch_size",
        type=int,
        default=32,
        help="Images per process and forward pass; the global batch of one optimizer step is this × the number of "
        "processes × --gradient_accumulation_steps.",
    )
    optim.add_argument("--per_device_eval_batch_size", type=int, default=64)
    optim.add_argument("--learning_rate", type=float, default=3e-4)
    optim.add_argument("--weight_decay", type=float, default=0.01)
    optim.add_argument(
        "--optim",
        default="adamw_torch_fused",
        choices=OPTIMIZERS,
        help="AdamW implementation, as TrainingArguments.optim names them: fused (one kernel for all parameters, "
        "torch's default where the device has no fused kernel) or torch's default.",
    )
    optim.add_argument(
        "--lr_scheduler_type",
        default="cosine",
        choices=SCHEDULERS,
        help="Warmup, then this decay over the run's steps (planned to the budget with --max_train_minutes).",
    )
    optim.add_argument("--num_warmup_steps", type=int, default=100)
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--max_grad_norm", type=float, default=1.0)
    optim.add_argument("--label_smoothing", type=float, default=0.1)
    optim.add_argument("--eos_penalty", type=float, default=0.0, help="Weight of the EOS-suppression loss.")
    optim.add_argument("--eos_min_length", type=int, default=0, help="EOS is suppressed before this many tokens.")
    optim.add_argument(
        "--unfreeze_schedule", default=None, help="e.g. 'bridge,cross_attention@0;decoder@1;encoder@2'."
    )
    optim.add_argument(
        "--encoder_lr_scale", type=float, default=0.1, help="LR scale of an unfrozen pretrained encoder."
    )
    optim.add_argument("--feature_cache_dir", default=None, help="Default: OUTPUT_DIR/feature_cache.")
    optim.add_argument("--no_feature_cache", action="store_true")
    optim.add_argument(
        "--mixed_precision",
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Default: the accelerate config's (accelerate launch); else on a GPU bf16 where it has bf16 arithmetic, "
        "fp16 with loss scaling where not; on a CPU no.",
    )
    optim.add_argument(
        "--cpu",
        action="store_true",
        help="Train on the CPU even where a GPU is present; with several processes (accelerate launch) they talk "
        "over gloo. Needed to run several processes on a machine without GPUs.",
    )
    optim.add_argument("--seed", type=int, default=0)
    speed = parser.add_argument_group("speed (on a GPU)")
    speed.add_argument(
        "--torch_compile",
        action="store_true",
        help="Compile the training step's forward and backward with torch.compile: slow first steps (and one more "
        "compilation per new caption length at first), faster ones after. Validation and the saved model stay eager.",
    )
    speed.add_argument(
        "--torch_compile_mode",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile's mode, with --torch_compile.",
    )
    speed.add_argument(
        "--torch_compile_backend",
        default=None,
        help="torch.compile's backend, with --torch_compile (default: inductor; aot_eager checks capture without "
        "generating code).",
    )
    speed.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="Keep only each layer's inputs for the backward pass and recompute the rest there: less activation "
        "memory (a larger batch fits) for about a third more compute, with the same loss and gradients.",
    )
    augment = parser.add_argument_group("augmentation (training images only)")
    augment.add_argument(
        "--augment", action="store_true", help="Random resized crop and colour jitter (and flips, see --augment_flip)."
    )
    augment.add_argument(
        "--augment_schedule",
        default="exponential",
        choices=SCHEDULE_KINDS,
        help="How the strength grows with the epoch: exponential (95%% of the maximum at --augment_ramp_epochs), "
        "linear, or constant.",
    )
    augment.add_argument("--augment_max_strength", type=float, default=1.0, help="The strength ramped to, in [0, 1].")
    augment.add_argument("--augment_ramp_epochs", type=float, default=10.0)
    augment.add_argument(
        "--augment_flip",
        default="off",
        choices=FLIP_MODES,
        help="'swap': mirror half the images and swap left/right in their captions.",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default="outputs/train")
    run.add_argument("--checkpointing_steps", default="epoch", help="An integer N (every N steps) or 'epoch'.")
    run.add_argument("--checkpoints_total_limit", type=int, default=2)
    run.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest'.")
    run.add_argument(
        "--with_tracking",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Log to --report_to (TensorBoard by default, in OUTPUT_DIR/captioner); --no-with_tracking turns it off.",
    )
    run.add_argument("--report_to", default="tensorboard")
    run.add_argument("--logging_steps", type=int, default=20)
    run.add_argument("--dry_run", action="store_true", help="Print the trainable parameters per stage and exit.")
    gen = parser.add_argument_group("generation (validation and the saved generation_config)")
    gen.add_argument("--num_beams", type=int, default=5)
    gen.add_argument(
        "--length_penalty", type=float, default=0.6, help="Beam search's length normalisation (1 with --num_beams 1)."
    )
    gen.add_argument(
        "--max_new_tokens",
        type=max_new_tokens_value,
        default="auto",
        help="Caption length limit in tokens; 'auto': the longest training reference and its EOS (a model never "
        "learned to write longer), within the model's positions.",
    )
    gen.add_argument(
        "--no_repeat_ngram_size",
        type=int,
        default=3,
        help="Never repeat an n-gram of this size within a caption (0: off). 3, chosen on the hard synthetic set's "
        "validation split, removes repeated phrases and raises CIDEr-D (BENCHMARKS.md).",
    )
    gen.add_argument(
        "--repetition_penalty", type=float, default=1.0, help="CTRL's penalty on tokens already generated (1: off)."
    )
    gen.add_argument("--no_meteor", action="store_true", help="Skip METEOR (its Java scorer takes seconds to start).")
    parser.add_argument("--config", default=None, help="A YAML or JSON file of these arguments (flags override it).")

    args = parser.parse_args(argv)
    if args.config:
        defaults = read_config_file(args.config, parser)
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    check_args(args)
    return args


def max_new_tokens_value(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of tokens or 'auto', got {value!r}")
    return int(value)


def reference_token_limit(tokenizer, captions: list[str], limit: int) -> int:
    """The longest caption in tokens, plus its EOS, at most `limit`: what `--max_new_tokens auto` resolves to."""
    lengths = tokenizer(captions, add_special_tokens=False)["input_ids"]
    return min(limit, max(len(ids) for ids in lengths) + 1)


def read_config_file(path: str, parser: argparse.ArgumentParser) -> dict:
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"--config: no such file {file}")
    text = file.read_text()
    if file.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SystemExit(f"--config {file}: unknown argument(s) {unknown}")
    return values


def check_args(args: argparse.Namespace) -> None:
    check_data_arguments(args)
    for name in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size", "num_beams"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.no_repeat_ngram_size < 0 or args.repetition_penalty <= 0:
        raise SystemExit(
            f"--no_repeat_ngram_size must be >= 0 and --repetition_penalty > 0, got {args.no_repeat_ngram_size} and "
            f"{args.repetition_penalty}."
        )
    if args.gradient_accumulation_steps < 1 or (args.max_train_steps is not None and args.max_train_steps < 1):
        raise SystemExit("--gradient_accumulation_steps and --max_train_steps must be at least 1.")
    if args.max_train_minutes is not None and args.max_train_minutes <= 0:
        raise SystemExit(f"--max_train_minutes must be positive, got {args.max_train_minutes}.")
    if args.learning_rate <= 0:
        raise SystemExit(f"--learning_rate must be positive, got {args.learning_rate}.")
    if args.checkpointing_steps != "epoch" and not str(args.checkpointing_steps).isdigit():
        raise SystemExit(f"--checkpointing_steps must be an integer or 'epoch', got {args.checkpointing_steps!r}.")
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise SystemExit("--mixed_precision fp16 needs a GPU; on a CPU use bf16 or no.")
    if args.captions_per_image < 1:
        raise SystemExit(f"--captions_per_image must be at least 1, got {args.captions_per_image}.")
    if args.num_workers is not None and args.num_workers < 0:
        raise SystemExit(f"--num_workers must be 0 or more, got {args.num_workers}.")
    for name in ("torch_compile_mode", "torch_compile_backend"):
        if getattr(args, name) is not None and not args.torch_compile:
            raise SystemExit(f"--{name} {getattr(args, name)} needs --torch_compile.")
    if args.captions_per_image > 1 and (args.all_pairs or args.dataset_format in STREAM_FORMATS):
        raise SystemExit(
            "--captions_per_image picks several references of each image from a dataset with one item per image; "
            + ("--all_pairs makes one item per pair." if args.all_pairs else "streamed rows carry one caption each.")
        )
    if args.all_pairs and args.dataset_format in STREAM_FORMATS:
        raise SystemExit(
            f"--all_pairs needs a dataset with random access; --dataset_format {args.dataset_format} streams."
        )
    augmentation_of(args)  # refuses bad --augment_* values before anything is loaded
    if args.num_beams == 1:
        # Length normalisation ranks finished beams; greedy search has none (and transformers refuses to save a
        # generation config with a length_penalty but no beams), so the saved and reported value is the neutral 1.
        if args.length_penalty not in (0.6, 1.0):  # not the default: the user asked for one
            logger.warning(f"--length_penalty {args.length_penalty} has no effect with --num_beams 1; saving 1.0.")
        args.length_penalty = 1.0


def default_mixed_precision(args) -> str | None:
    """
    The mixed precision to ask Accelerate for: --mixed_precision when given; None (Accelerate then reads it) under
    `accelerate launch`, whose config sets ACCELERATE_MIXED_PRECISION; else bf16 on a GPU with bf16 arithmetic (no
    loss scaling, fp32's range), fp16 with loss scaling on an older GPU, and no on a CPU.
    """
    if args.mixed_precision is not None or "ACCELERATE_MIXED_PRECISION" in os.environ:
        return args.mixed_precision
    if not on_cuda(args):
        return "no"
    # Without emulation: torch counts a GPU that only emulates bf16 (slowly) as supporting it by default.
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def on_cuda(args) -> bool:
    """Whether the run trains on a CUDA GPU: Accelerate takes one where there is one, unless --cpu."""
    return torch.cuda.is_available() and not args.cpu


def default_num_workers(args, device: torch.device, num_processes: int) -> int:
    """
    --num_workers when given. Else on a GPU min(8, CPU cores per process on this node), so that image decoding and
    augmentation keep up with the GPU; a webdataset stream deals its training shard files to (process × worker)
    readers, so it gets no more workers than it has files per process. On a CPU 0: workers would take the cores the
    training step computes on.
    """
    if args.num_workers is not None:
        return args.num_workers
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(8, cores // get_int_from_env(["LOCAL_WORLD_SIZE"], 1)))
    if args.dataset_format == "webdataset":
        from captioning.data.web.shards import expand_shards

        # The last shard is held out for validation and test unless both are given (load_web_splits).
        held_out = 0 if args.validation_files and args.test_files else 1
        training_shards = len(expand_shards(args.data_files)) - held_out
        workers = min(workers, max(1, training_shards // num_processes))
    return workers


def uses_channels_last(model, device: torch.device) -> bool:
    """Whether the backbone's weights and the images go channels-last (NHWC): on CUDA, for a convolutional backbone
    (ResNet, ConvNeXt: configs with `hidden_sizes`), whose cuDNN convolutions run NHWC natively on tensor cores
    (PyTorch's channels-last tutorial). A ViT cuts its images into patches and gains nothing; a CPU keeps NCHW."""
    return device.type == "cuda" and bool(getattr(model.encoder.backbone.config, "hidden_sizes", None))


def enable_gradient_checkpointing(model) -> None:
    """--gradient_checkpointing on the model before `accelerator.prepare`: its checkpointing layers (decoder layers,
    the bridge's encoder layers, a 🤗 backbone's own) recompute their activations in the backward pass. Non-reentrant
    checkpointing, torch's recommended kind: it works with frozen inputs, keyword arguments and torch.compile, and
    replays the same dropout masks."""
    kwargs = {"use_reentrant": False}
    try:
        if hasattr(model, "activation_checkpointing_enable"):  # its name in later transformers 5 releases
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    except ValueError as error:
        raise SystemExit(f"--gradient_checkpointing: {error}") from error


def compiled(model, args, accelerator):
    """The prepared model compiled with torch.compile (--torch_compile), to run the training step's forward (its
    backward is compiled with it); else `model`. Only the step runs compiled: validation generates with the eager
    model, and saving, unwrapping and checkpoints see the prepared model as without the flag (no `_orig_mod.` in
    parameter names), so a run can resume with or without --torch_compile."""
    if not args.torch_compile:
        return model
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise SystemExit(
            "--torch_compile with DeepSpeed: DeepSpeed compiles its engine itself (its config's compile section); "
            "leave out --torch_compile, or use DDP or FSDP."
        )
    return torch.compile(model, mode=args.torch_compile_mode, backend=args.torch_compile_backend or "inductor")


def token_share(accelerator, num_tokens: int) -> float | torch.Tensor | None:
    """
    This process's share of the step's caption tokens, all processes together; None where no process has a token
    (every image of the step failed to decode). With one process 1.0; with several a float64 tensor on the device,
    never read back by a process that has tokens of its own: only one with none (its images all failed) waits for the
    sum to learn whether the others have any. So a step costs no host synchronisation.
    """
    if accelerator.num_processes == 1:
        return 1.0 if num_tokens else None
    # Pageable memory: the copy returns once the number is staged, without waiting for the device.
    local = torch.tensor(float(num_tokens), dtype=torch.float64).to(accelerator.device, non_blocking=True)
    total = accelerator.reduce(local, "sum")
    if num_tokens == 0 and total.item() == 0:
        return None
    return local / total


class StepTallies:
    """
    What the training loop adds up step by step without waiting for the device: the loss since the last logging step
    (each forward's token-mean loss times its process's token share, summed in float64 on the device) and the images
    this process dropped (a host count). They are read, summed over processes, at logging steps
    (`mean_loss`) and at checkpoints and epoch ends (`take_dropped`), which all processes reach together.
    """

    def __init__(self):
        self.loss: float | torch.Tensor = 0.0
        self.count = 0
        self.dropped = 0

    def add_loss(self, loss: torch.Tensor, share: float | torch.Tensor) -> None:
        self.loss = self.loss + loss.detach().double() * share
        self.count += 1

    def mean_loss(self, accelerator) -> float:
        """The mean loss of the forwards since the last call, over all processes; the sum starts again."""
        total = torch.as_tensor(self.loss, dtype=torch.float32, device=accelerator.device)
        mean = accelerator.reduce(total, "sum").item() / self.count
        self.loss, self.count = 0.0, 0
        return mean

    def take_dropped(self, accelerator) -> int:
        """Images dropped by all processes since the last call."""
        dropped = accelerator.reduce(torch.tensor(self.dropped, device=accelerator.device), "sum").item()
        self.dropped = 0
        return int(dropped)


def augmentation_of(args) -> tuple[ImageAugmentation | None, AugmentationSchedule]:
    """The collator's augmentation (None without --augment) and its schedule, from the --augment_* flags."""
    try:
        schedule = AugmentationSchedule(args.augment_schedule, args.augment_max_strength, args.augment_ramp_epochs)
        return (ImageAugmentation(flip=args.augment_flip) if args.augment else None), schedule
    except ValueError as error:
        raise SystemExit(f"{error} (see the --augment_* flags)") from error


def input_image_size(args) -> int:
    """The side of the model's input images, known before the model is built: streamed images are shrunk to it
    right after decoding, unless --max_image_side says otherwise."""
    from transformers import AutoConfig

    if args.model_name_or_path:
        return AutoConfig.from_pretrained(args.model_name_or_path).image_size
    if is_pretrained_id(args.encoder):
        return getattr(AutoConfig.from_pretrained(args.encoder), "image_size", 224)
    return CaptionerConfig.from_preset(args.preset, encoder=args.encoder, decoder=args.decoder).image_size


class EpochSampler(Sampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run replays the same order from the same batch."""

    def __init__(self, num_items: int, seed: int):
        self.num_items, self.seed, self.epoch = num_items, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_items, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_items


class CachedFeatures(torch.utils.data.Dataset):
    """While the backbone is frozen, items whose features are cached come without their image: no decode, no resize,
    no backbone forward."""

    def __init__(self, dataset, cache: FeatureCache):
        self.dataset, self.cache = dataset, cache
        # Set per epoch: once the encoder trains, its weights move and the cached features are stale.
        self.enabled = True

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if not self.enabled or not self.cache.filled[index]:
            return self.dataset[index]
        item = self.dataset.item_without_image(index)
        return item if item is None else {**item, "vision_features": self.cache.get([index])[0]}


def step_inputs(model, batch: dict, cache: FeatureCache | None, device, channels_last: bool = False) -> dict:
    """The model inputs of one training step. The loss is computed outside (label smoothing, EOS suppression), so the
    model gets decoder inputs, not labels. With a `cache` (the backbone is frozen), image features are read from it
    (or computed and stored); without one, the backbone runs on pixel_values (channels-last with `channels_last`)."""
    pixel_values = batch.get("pixel_values")
    if channels_last and pixel_values is not None:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    inputs = {
        "decoder_input_ids": model.prepare_decoder_input_ids_from_labels(batch["labels"]),
        "decoder_attention_mask": batch["decoder_attention_mask"],
        "use_cache": False,
    }
    # Inputs follow the weights' dtype: DeepSpeed with fp16/bf16 casts the weights themselves (no autocast); under
    # autocast the weights stay float32 and this changes nothing.
    if cache is not None and "vision_features" in batch:
        inputs["vision_features"] = batch["vision_features"].to(model.dtype)
    elif cache is not None:
        features = cached_vision_features(model, cache, batch["indices"], pixel_values)
        inputs["vision_features"] = features.to(device, model.dtype)
    else:
        inputs["pixel_values"] = pixel_values.to(model.dtype)
    return inputs


def placeholder_batch(config, image_processor, device) -> dict:
    """One black image captioned by EOS alone: the stand-in batch of a process whose images all failed to decode,
    trained on at zero weight (see the training loop)."""
    image = PIL.Image.new("RGB", (config.image_size, config.image_size))
    pixel_values = image_processor([image], return_tensors="pt")["pixel_values"]
    labels = torch.tensor([[config.eos_token_id]])
    return {
        "pixel_values": pixel_values.to(device),
        "labels": labels.to(device),
        "decoder_attention_mask": torch.ones_like(labels).to(device),
    }


def is_pretrained_id(value: str | None) -> bool:
    """An --encoder/--decoder value naming pretrained weights (hub id or folder), not an architecture keyword."""
    return value is not None and value not in ("resnet", "vit", *DECODER_TYPES)


def build_tokenizer_for(args, train_captions: list[str]):
    if args.tokenizer:
        return AutoTokenizer.from_pretrained(args.tokenizer)
    if is_pretrained_id(args.decoder):
        return AutoTokenizer.from_pretrained(args.decoder)
    return build_tokenizer(train_captions, vocab_size=args.vocab_size)


def build_model(args, tokenizer) -> tuple[CaptionerForConditionalGeneration, bool, bool]:
    """The model and whether its encoder / decoder start from pretrained weights."""
    if args.model_name_or_path:
        model = CaptionerForConditionalGeneration.from_pretrained(args.model_name_or_path)
        return model, True, True
    if is_pretrained_id(args.encoder):
        decoder = args.decoder if is_pretrained_id(args.decoder) else None
        preset = CaptionerConfig.from_preset(args.preset)
        # The bridge and from-scratch decoder take the preset's sizes; the backbone comes from the checkpoint.
        sizes = (
            "d_model",
            "encoder_layers",
            "encoder_attention_heads",
            "encoder_ffn_dim",
            "decoder_layers",
            "decoder_attention_heads",
            "decoder_ffn_dim",
            "max_position_embeddings",
            "dropout",
        )
        fields = {k: getattr(preset, k) for k in sizes}
        model = CaptionerForConditionalGeneration.from_encoder_decoder_pretrained(
            args.encoder, decoder, tokenizer=tokenizer, **({} if decoder else fields)
        )
        return model, True, decoder is not None
    config = CaptionerConfig.from_preset(args.preset, encoder=args.encoder, decoder=args.decoder, tokenizer=tokenizer)
    return CaptionerForConditionalGeneration(config), False, False


def prepare_for_strategy(accelerator, model, schedule: UnfreezingSchedule) -> None:
    """What DDP, FSDP and DeepSpeed each need before `accelerator.prepare`; a setup that cannot work stops here, with
    the reason."""
    freezes = any(set(stage.groups) != set(GROUPS) for stage in schedule.stages)
    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        if plugin.fsdp_version != 2:
            raise SystemExit(
                f"train.py needs FSDP version 2 (fsdp_version: 2 in the accelerate config, as in "
                f"configs/accelerate/fsdp.yaml), got version {plugin.fsdp_version}: version 1 wraps the model so that "
                "generate() cannot run on it for validation, and flattens the parameters the unfreezing schedule "
                "freezes by name."
            )
        # Accelerate refuses a layer class the model lacks; one config file names the layers of every decoder
        # (CaptionerEncoderLayer, CaptionerDecoderLayer, GPT2Block), so keep those this model has.
        present = {type(module).__name__ for module in model.modules()}
        wanted = plugin.transformer_cls_names_to_wrap or list(getattr(model, "_no_split_modules", None) or [])
        plugin.transformer_cls_names_to_wrap = [name for name in wanted if name in present]
    elif accelerator.distributed_type == DistributedType.DEEPSPEED:
        if len(schedule.stages) > 1:
            raise SystemExit(
                f"DeepSpeed fixes which parameters train when it starts, but the unfreezing schedule has "
                f"{len(schedule.stages)} stages: give --unfreeze_schedule one stage (e.g. "
                "'encoder,bridge,cross_attention,decoder@0'), or use DDP or FSDP for a staged schedule."
            )
        schedule.apply(model, 0)
    elif accelerator.num_processes > 1 and freezes:
        # DDP waits for a gradient of every parameter it was built with; a group frozen by the schedule sends none,
        # and find_unused_parameters tells DDP to stop waiting for it (and to leave its gradient None, so AdamW leaves
        # the frozen weights alone).
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)


def save_model(accelerator, model, processor, output_dir: Path) -> None:
    """The model and its processor as a 🤗 folder. Call it on every process: under FSDP or DeepSpeed ZeRO-3 each
    process holds a shard of the weights and takes part in gathering them; only the main process writes."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(output_dir)


def list_checkpoints(directory: Path) -> list[Path]:
    found = [p for p in directory.glob("step_*") if p.is_dir() and (p / "training_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def save_checkpoint(accelerator, directory: Path, state: dict, limit: int, caches: list[FeatureCache]) -> None:
    """Save to a temporary folder, then rename: a run killed mid-save leaves the previous checkpoint intact. Every
    process saves (its random states; its shard under FSDP or DeepSpeed); the main process renames once all have
    written, so `directory` must be on a filesystem that every node sees."""
    final = directory / f"step_{state['completed_steps']}"
    temporary = directory / f".tmp_step_{state['completed_steps']}"
    for cache in caches:
        cache.flush()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / "training_state.json").write_text(json.dumps(state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        temporary.rename(final)
        for old in list_checkpoints(directory)[:-limit] if limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def main(argv=None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    mixed_precision = default_mixed_precision(args)
    if args.mixed_precision is not None:
        chosen_by = "--mixed_precision"
    elif mixed_precision is None:
        chosen_by = "the accelerate launch config"
    else:
        chosen_by = (
            "the default on this device: bf16 on a GPU with bf16 arithmetic, fp16 on another GPU, none on a CPU"
        )
    accelerator = Accelerator(
        cpu=args.cpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=str(output_dir),
        # With the DataLoaders' pinned memory on a GPU: a batch copies to the GPU while the previous step computes.
        dataloader_config=DataLoaderConfiguration(non_blocking=on_cuda(args)),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logger.setLevel(logging.WARNING)
    launched = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)
    if launched > 1 and accelerator.num_processes == 1:
        raise SystemExit(
            f"{launched} processes were launched but Accelerate joined none of them into one run (it found no GPU and "
            "--cpu was not given), so each would train alone and overwrite the others' files. On a machine without "
            "GPUs pass --cpu to train.py (see configs/accelerate/cpu-2proc.yaml)."
        )
    # What the run actually uses: `accelerate launch` can set both (its config file, ACCELERATE_* variables).
    for name, value in (
        ("gradient_accumulation_steps", accelerator.gradient_accumulation_steps),
        ("mixed_precision", accelerator.mixed_precision),
    ):
        if getattr(args, name) not in (None, value):
            logger.warning(f"--{name} {getattr(args, name)} is overridden by the accelerate launch setting {value}")
        setattr(args, name, value)
    logger.info(f"mixed precision: {accelerator.mixed_precision} ({chosen_by})")
    args.num_workers = default_num_workers(args, accelerator.device, accelerator.num_processes)
    pin_memory = accelerator.device.type == "cuda"
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = output_dir / "checkpoints"

    # Data: every split is read and checked before any training starts.
    streaming = args.dataset_format in STREAM_FORMATS
    if streaming:
        # Training rows are read as they stream, each process its share; validation and test are fetched once.
        splits = load_splits_from_args(
            args,
            image_side=input_image_size(args),
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
            num_workers=args.num_workers,
        )
    else:
        splits = load_splits_from_args(args)
    for name, split in splits.items():
        logger.info(f"{name}: {split.summary()}")
    train_split = splits["train"]
    if args.max_train_samples is not None and not streaming:  # a stream applies it while reading its rows
        train_split = train_split.subset(range(min(args.max_train_samples, len(train_split))))
    validation = splits["validation"]
    if args.max_eval_samples is not None:
        validation = validation.subset(range(min(args.max_eval_samples, len(validation))))

    train_captions = train_split.all_captions()
    tokenizer = build_tokenizer_for(args, train_captions)
    model, encoder_pretrained, decoder_pretrained = build_model(args, tokenizer)
    processor = CaptionerProcessor(build_image_processor(model.config), tokenizer)
    if args.max_new_tokens == "auto":
        # Positions hold the start token and the caption.
        positions = getattr(model.config, "max_position_embeddings", None) or 1024
        args.max_new_tokens = reference_token_limit(tokenizer, train_captions, positions - 1)
        logger.info(f"--max_new_tokens auto: {args.max_new_tokens} (the longest training caption and its EOS)")
    model.generation_config.update(
        # Saved as max_length (the start token + max_new_tokens) so callers' max_length still overrides it.
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        max_length=args.max_new_tokens + 1,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        repetition_penalty=args.repetition_penalty,
    )
    if args.unfreeze_schedule:
        lr_scales = {"encoder": args.encoder_lr_scale}
        schedule = UnfreezingSchedule.parse(args.unfreeze_schedule, lr_scales)
    else:
        schedule = UnfreezingSchedule.default(encoder_pretrained, decoder_pretrained, args.encoder_lr_scale)
    stages = schedule.describe(model)
    logger.info("unfreezing schedule:\n" + stages)
    if args.dry_run:
        print(stages)
        return {"schedule": stages}
    if accelerator.is_main_process:
        # The resolved arguments; `--config OUTPUT_DIR/training_args.json` repeats the run, and the model card reads it.
        (output_dir / "training_args.json").write_text(json.dumps(vars(args), indent=2))

    train_items = CaptionPairs(train_split) if args.all_pairs else train_split
    cache = None
    # The cache holds one row per image, so it serves one-item-per-image training (not --all_pairs).
    frozen_stage = any("encoder" not in stage.groups for stage in schedule.stages)
    if frozen_stage and not args.no_feature_cache and not args.all_pairs:
        if streaming or args.augment:
            # Cached features are of un-augmented images, kept by index in a file of the split's size.
            why = "a streamed source has no fixed set of images" if streaming else "they come from un-augmented images"
            logger.info(f"feature cache: off ({why}); the frozen backbone runs on every batch")
        elif accelerator.num_processes > 1:
            logger.info(
                f"feature cache: off with {accelerator.num_processes} processes (they would all write one cache file); "
                "the frozen backbone runs on every batch"
            )
        else:
            key = cache_key(model.encoder.backbone, processor.image_processor, train_split.fingerprint())
            cache = FeatureCache(args.feature_cache_dir or output_dir / "feature_cache", key, len(train_split))
            train_items = CachedFeatures(train_split, cache)
    augmentation, augmentation_schedule = augmentation_of(args)
    collator = CaptionCollator(
        processor,
        max_length=model.config.max_position_embeddings,
        seed=args.seed,
        augmentation=augmentation,
        augmentation_schedule=augmentation_schedule,
        captions_per_image=args.captions_per_image,
    )
    if args.captions_per_image > 1:
        fewest = min(len(record.captions) for record in train_split.records)
        if fewest < args.captions_per_image:
            raise SystemExit(
                f"--captions_per_image {args.captions_per_image}: some training images have only {fewest} "
                "reference(s)."
            )
    if streaming:
        # Each process reads its own shards of the stream (no sampler, no sharding by Accelerate).
        stream_progress = StreamProgress.of(train_split)
        train_loader = DataLoader(
            train_split,
            batch_size=args.per_device_train_batch_size,
            collate_fn=StreamCollator(collator),
            num_workers=args.num_workers,
            pin_memory=pin_memory,
            # Kept from epoch to epoch: no fork of the training process, no new downloader start-up per epoch.
            persistent_workers=args.num_workers > 0,
        )
    else:
        # One shuffle for all processes: Accelerate deals batch i of it to process i mod N, so the N batches of one
        # step hold the same images as the one batch of a single process with N times the batch size.
        sampler = EpochSampler(len(train_items), args.seed)
        train_loader = DataLoader(
            train_items,
            batch_size=args.per_device_train_batch_size,
            sampler=sampler,
            collate_fn=collator,
            num_workers=args.num_workers,
            pin_memory=pin_memory,
        )

    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    channels_last = uses_channels_last(model, accelerator.device)
    if channels_last:
        model.encoder.backbone.to(memory_format=torch.channels_last)
    compile_with = f"{args.torch_compile_backend or 'inductor'}, mode {args.torch_compile_mode or 'default'}"
    logger.info(
        f"speed: {args.num_workers} DataLoader worker(s); pinned memory and non-blocking copies "
        f"{'on' if pin_memory else 'off'}; channels_last {'on' if channels_last else 'off'}; torch.compile "
        f"{compile_with if args.torch_compile else 'off'}; gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}"
    )
    optimizer = build_adamw(
        optimizer_groups(model, schedule, args.learning_rate, args.weight_decay),
        accelerator.device,
        args.optim,
        loss_scaling=accelerator.scaler is not None,
    )
    # Each process gets every N-th batch; an epoch whose batches do not divide evenly is topped up with batches
    # from its start (Accelerate's even_batches), so all processes take the same number of steps.
    if streaming:
        # The stream is this process's already, padded so that every process takes the same number of batches:
        # max(1, num_workers) × ceil(rows of the longest shard / batch size), a shard being a process's worker.
        batches_per_process = train_split.batches_per_epoch(args.per_device_train_batch_size)
    else:
        batches_per_process = math.ceil(len(train_loader) / accelerator.num_processes)
    updates_per_epoch = math.ceil(batches_per_process / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    step_limit = max_train_steps
    planned_decay = None
    if args.max_train_minutes is not None and args.lr_scheduler_type in PLANNED_SCHEDULES:
        # The decay's length is planned from the time budget as the run goes (TimeBudget), and saved with the
        # scheduler's state.
        planned_decay = PlannedDecay(
            args.lr_scheduler_type,
            args.num_warmup_steps * accelerator.num_processes,
            max_train_steps * accelerator.num_processes,
        )
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, planned_decay)
    else:
        lr_scheduler = get_scheduler(
            args.lr_scheduler_type,
            optimizer=optimizer,
            # Accelerate steps the scheduler once per process at every optimizer step.
            num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
            num_training_steps=max_train_steps * accelerator.num_processes,
        )
    global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"global batch: {global_batch} images per optimizer step = {args.per_device_train_batch_size} per process × "
        f"{accelerator.num_processes} process(es) × {args.gradient_accumulation_steps} accumulation step(s); "
        f"{updates_per_epoch} steps per epoch, {max_train_steps} in all"
    )
    prepare_for_strategy(accelerator, model, schedule)
    if streaming:
        model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
        # Not split again: the stream deals its rows.
        train_loader = StreamLoader(train_loader, accelerator.device, non_blocking=pin_memory)
    else:
        model, optimizer, train_loader, lr_scheduler = accelerator.prepare(
            model, optimizer, train_loader, lr_scheduler
        )
    if args.with_tracking:
        accelerator.init_trackers(
            "captioner", {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        )

    state = {
        "completed_steps": 0,
        "epoch": 0,
        "batches_in_epoch": 0,
        "best_cider": None,
        "history": [],
        "dropped": 0,
        "num_processes": accelerator.num_processes,
        "stream": None,  # where a mid-epoch checkpoint stopped in a streamed source (StreamProgress.position)
        "downloads": [],  # one report per epoch of a streamed source (StreamProgress.report, all processes)
        "train_seconds": 0.0,  # training and validation time so far, what --max_train_minutes counts
        "planned_steps": None,  # where --max_train_minutes plans to stop
    }
    if args.resume_from_checkpoint:
        path = Path(args.resume_from_checkpoint)
        if args.resume_from_checkpoint == "latest":
            found = list_checkpoints(checkpoint_dir)
            path = found[-1] if found else None
        if path is None:
            logger.info(f"no checkpoint in {checkpoint_dir}: starting from scratch")
        elif not (path / "training_state.json").is_file():
            raise SystemExit(f"--resume_from_checkpoint {path}: not a checkpoint folder of this script.")
        else:
            saved = json.loads((path / "training_state.json").read_text())
            saved_processes = saved.get("num_processes", 1)
            if saved["batches_in_epoch"] and saved_processes != accelerator.num_processes:
                raise SystemExit(
                    f"--resume_from_checkpoint {path}: saved mid-epoch by {saved_processes} process(es), resumed with "
                    f"{accelerator.num_processes}; the batches already seen depend on the number of processes, so "
                    "resume with the same number, or from a checkpoint saved at the end of an epoch."
                )
            accelerator.load_state(str(path))
            state = {
                "stream": None,
                "downloads": [],
                "train_seconds": 0.0,
                "planned_steps": None,
                **saved,
                "num_processes": accelerator.num_processes,
            }
            if state["planned_steps"] is not None:
                max_train_steps = state["planned_steps"]
            logger.info(f"resumed from {path}: epoch {state['epoch']}, step {state['completed_steps']}")
    # What runs: --optim, except with fp16 loss scaling (build_adamw) or after a resume (the checkpoint's).
    why = ", fp16 loss scaling" if accelerator.scaler is not None else ""
    logger.info(f"AdamW: {adamw_implementation(optimizer)} (--optim {args.optim}{why}; a resumed run keeps its own)")

    unwrapped = accelerator.unwrap_model(model)
    forward = compiled(model, args, accelerator)
    checkpoint_every = None if args.checkpointing_steps == "epoch" else int(args.checkpointing_steps)
    progress = tqdm(
        total=max_train_steps, initial=state["completed_steps"], disable=not accelerator.is_local_main_process
    )
    started = time.perf_counter() - state["train_seconds"]
    tallies = StepTallies()
    placeholder = None
    budget = (
        None if args.max_train_minutes is None else TimeBudget(60 * args.max_train_minutes, state["train_seconds"])
    )

    def out_of_time() -> bool:
        if budget is None:
            return False
        if accelerator.num_processes == 1:
            return budget.expired
        # One process going on alone would wait for the others at its next all-reduce forever: all stop together.
        return accelerator.reduce(torch.tensor(int(budget.expired), device=accelerator.device), "sum").item() > 0

    def replan() -> int:
        """The step --max_train_minutes stops at, planned on the main process and the same on every process; the
        planned decay follows it."""
        planned = budget.plan(state["completed_steps"], updates_per_epoch, step_limit)
        planned = broadcast_object_list([planned])[0]
        if planned is None:
            return max_train_steps
        state["planned_steps"] = planned
        if planned_decay is not None:
            planned_decay.total_steps = planned * accelerator.num_processes
        progress.total = planned
        progress.refresh()
        return planned

    for epoch in range(state["epoch"], num_epochs):
        groups = schedule.apply(unwrapped, epoch)
        train_mode(unwrapped, groups)
        frozen_encoder = "encoder" not in groups
        if isinstance(train_items, CachedFeatures):
            train_items.enabled = frozen_encoder
        # Through the prepared loader, not the sampler: the loader sets its sampler's epoch to its own count of
        # passes when iterated, which a resumed run restarts from 0.
        train_loader.set_epoch(epoch)
        collator.set_epoch(epoch)
        if args.augment and args.with_tracking:
            accelerator.log(
                {"train/augmentation_strength": collator.augmentation_strength(epoch)}, step=state["completed_steps"]
            )
        loader = train_loader
        if streaming:
            # Resumed mid-epoch, the stream leaves out the rows the checkpoint's batches held (not a replay).
            position = state["stream"] if state["batches_in_epoch"] else None
            try:
                train_split.set_position(position)
            except ValueError as error:
                raise SystemExit(f"--resume_from_checkpoint: {error}") from error
            stream_progress.start_epoch(epoch, position)
            loader = stream_progress.timed(train_loader)
        elif state["batches_in_epoch"]:
            loader = accelerator.skip_first_batches(train_loader, state["batches_in_epoch"])
        for batch in loader:
            state["batches_in_epoch"] += 1
            if streaming:
                stream_progress.update(batch.pop("stream"))
            tallies.dropped += batch.pop("num_dropped", 0)
            share = token_share(accelerator, batch.pop("num_tokens", 0))
            if share is None:  # every image of this step failed to decode, on every process: nothing to learn
                continue
            standing_in = "labels" not in batch
            if standing_in:
                # This process's images all failed to decode, another's did not: it still runs a forward and a
                # backward, at zero weight, so that the gradient all-reduce and the accumulation count stay in step.
                if placeholder is None:
                    placeholder = placeholder_batch(unwrapped.config, processor.image_processor, accelerator.device)
                batch = placeholder
                unwrapped.eval()  # no BatchNorm statistics from a black image
            labels = batch["labels"]
            use_cache = cache if frozen_encoder and not standing_in else None
            inputs = step_inputs(unwrapped, batch, use_cache, accelerator.device, channels_last)
            # Processes average their gradients; weighting each one's token-mean loss by its share of the step's
            # tokens makes that average the token mean over the global batch, as a single process computes it (the
            # optional EOS and attention penalties, weighted alike, come close to their single-process values).
            weight = share * accelerator.num_processes  # with several processes a float64 tensor, cast below
            with accelerator.accumulate(model):
                outputs = forward(**inputs)
                loss, _ = caption_loss(
                    outputs.logits,
                    labels,
                    label_smoothing=args.label_smoothing,
                    eos_token_id=unwrapped.config.eos_token_id,
                    eos_min_length=args.eos_min_length,
                    eos_penalty=args.eos_penalty,
                )
                if outputs.attention_penalty is not None:  # Show, Attend and Tell's attention regularisation
                    loss = loss + outputs.attention_penalty
                accelerator.backward(loss * (weight.to(loss.dtype) if torch.is_tensor(weight) else weight))
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if standing_in:
                train_mode(unwrapped, groups)
            tallies.add_loss(loss, share)
            if not accelerator.sync_gradients:
                continue
            state["completed_steps"] += 1
            progress.update(1)
            if budget is not None:
                budget.step_done()
                if state["planned_steps"] is None and budget.timed_steps == 10:
                    max_train_steps = replan()  # a first plan; each epoch's end corrects it
            if state["completed_steps"] % args.logging_steps == 0:
                record = {
                    "step": state["completed_steps"],
                    "epoch": epoch,
                    "loss": tallies.mean_loss(accelerator),
                    "lr": lr_scheduler.get_last_lr()[0],
                    "stage": schedule.stage_index(epoch) + 1,
                }
                if args.augment:
                    record["augmentation_strength"] = collator.augmentation_strength(epoch)
                state["history"].append(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}", stage=record["stage"])
                if args.with_tracking:
                    accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])
            if checkpoint_every and state["completed_steps"] % checkpoint_every == 0:
                state["dropped"] += tallies.take_dropped(accelerator)
                if budget is not None:
                    state["train_seconds"] = budget.elapsed
                if streaming:
                    state["stream"] = stream_progress.position(accelerator)
                save_checkpoint(
                    accelerator,
                    checkpoint_dir,
                    {**state, "epoch": epoch},
                    args.checkpoints_total_limit,
                    [cache] if cache else [],
                )
            if state["completed_steps"] >= max_train_steps or out_of_time():
                break

        # End of epoch: report the stream, score generated validation captions, keep the best model by CIDEr-D.
        state["dropped"] += tallies.take_dropped(accelerator)
        if budget is not None:
            budget.begin_validation()
        state["epoch"], state["batches_in_epoch"], state["stream"] = epoch + 1, 0, None
        if streaming:
            report = stream_progress.report()
            if accelerator.num_processes > 1:
                from accelerate.utils import gather_object

                report = sum_reports(gather_object([report]), processes=True)
            state["downloads"].append({"epoch": epoch, **report})
            logger.info(f"epoch {epoch}: training data: {format_report(report)}")
            if args.with_tracking:
                scalars = {name: value for name, value in report.items() if isinstance(value, int | float)}
                scalars.update({f"failures/{kind}": count for kind, count in report["failures"].items()})
                accelerator.log(
                    {f"data/{name}": value for name, value in scalars.items()}, step=state["completed_steps"]
                )
        if cache is not None:
            cache.flush()
        predictions, references, _, truncated = generate_captions(
            model,
            processor,
            validation,
            accelerator,
            batch_size=args.per_device_eval_batch_size,
            num_workers=args.num_workers,
        )
        metrics = diagnostics = None
        if accelerator.is_main_process:
            from captioning.evaluation.metrics import compute_caption_metrics

            metrics = compute_caption_metrics(
                predictions, references, expected_num_images=len(validation), meteor=not args.no_meteor
            )
            diagnostics = caption_diagnostics(predictions, references, truncated)
        # Scored once, on the main process; every process keeps the same state and joins in saving a new best.
        metrics, diagnostics = broadcast_object_list([metrics, diagnostics])
        cider = metrics["CIDEr-D"]
        state["history"].append({"step": state["completed_steps"], "epoch": epoch, **metrics, **diagnostics})
        logger.info(
            f"epoch {epoch}: validation "
            + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        )
        logger.info(f"epoch {epoch}: validation captions: {format_diagnostics(diagnostics)}")
        if state["best_cider"] is None or cider > state["best_cider"]:
            state["best_cider"] = cider
            save_model(accelerator, model, processor, output_dir)
            logger.info(f"new best validation CIDEr-D {cider:.4f}: saved {output_dir}")
        if args.with_tracking:
            # Every diagnostic is a number (the vocabulary an int); the references' go to validation/references/.
            scalars = {k: v for k, v in metrics.items() if isinstance(v, float)} | diagnostics
            accelerator.log({f"validation/{k}": v for k, v in scalars.items()}, step=state["completed_steps"])
        if budget is not None:
            state["train_seconds"] = budget.elapsed
            budget.end_validation()
            max_train_steps = replan()
        if args.checkpointing_steps == "epoch" or state["completed_steps"] >= max_train_steps:
            save_checkpoint(accelerator, checkpoint_dir, state, args.checkpoints_total_limit, [cache] if cache else [])
        if state["completed_steps"] >= max_train_steps or out_of_time():
            break
    progress.close()
    train_seconds = time.perf_counter() - started
    # Let go of the DDP wrapper, which holds the process group: end_training() then destroys the group from Python,
    # which releases the GIL while Gloo's worker threads finish. Left to the interpreter's exit, the wrapper's
    # teardown joins those threads holding the GIL, and one still freeing a gathered tensor waits for it forever
    # (pytorch/pytorch#190489; seen as a 1-in-10 hang at exit with two CPU processes).
    del model, forward, optimizer, lr_scheduler
    accelerator.free_memory()

    return finish(args, accelerator, output_dir, splits, state, train_seconds)


def finish(args, accelerator, output_dir: Path, splits, state: dict, train_seconds: float) -> dict:
    """Score the best model on the test split; write metrics.json, predictions.json, samples.png, the curves."""
    from transformers import AutoModel, AutoProcessor

    from captioning.evaluation.metrics import compute_caption_metrics, human_agreement
    from captioning.training.reporting import save_samples, save_training_curves

    accelerator.wait_for_everyone()
    best = AutoModel.from_pretrained(output_dir).to(accelerator.device)
    processor = AutoProcessor.from_pretrained(output_dir)
    test = splits["test"]
    predictions, references, dropped, truncated = generate_captions(
        best, processor, test, accelerator, batch_size=args.per_device_eval_batch_size, num_workers=args.num_workers
    )
    report = {}
    if accelerator.is_main_process:
        meteor = not args.no_meteor
        test_metrics = compute_caption_metrics(predictions, references, expected_num_images=len(test), meteor=meteor)
        # Beside "test", not in it: the model card's model-index takes every number of "test" as a score.
        test_diagnostics = caption_diagnostics(predictions, references, truncated)
        # Human agreement scores each reference against the others: it needs two or more per image.
        agreement = None
        if min(len(refs) for refs in references.values()) >= 2:
            agreement = human_agreement(list(references.values()), meteor=meteor)
        report = {
            "dataset_format": args.dataset_format,
            "split": "test",
            "num_images": len(predictions),
            "generation": {
                "num_beams": args.num_beams,
                "length_penalty": args.length_penalty,
                "max_new_tokens": args.max_new_tokens,
                "no_repeat_ngram_size": args.no_repeat_ngram_size,
                "repetition_penalty": args.repetition_penalty,
            },
            "test": test_metrics,
            "test_diagnostics": test_diagnostics,
            "human_agreement": agreement,
            "best_validation_cider": state["best_cider"],
            "optimizer_steps": state["completed_steps"],
            "num_processes": accelerator.num_processes,
            "global_train_batch_size": (
                args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
            ),
            "train_seconds": round(train_seconds, 1),
            "skipped": {name: split.skipped.as_dict() for name, split in splits.items()},
            "images_dropped_while_training": state["dropped"],
            "images_dropped_at_test": dropped,
        }
        if args.dataset_format in STREAM_FORMATS:
            # Training: every epoch's report and their sum; validation and test were fetched once.
            report["downloads"] = {
                "train": sum_reports(state["downloads"]),
                "epochs": state["downloads"],
                **{name: splits[name].downloads.as_dict() for name in ("validation", "test")},
            }
        (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        write_predictions(output_dir / "predictions.json", predictions, references)
        validation = splits["validation"]
        shown = [item for item in (validation[i] for i in range(min(8, len(validation)))) if item is not None]
        if shown:
            pixel_values = processor(images=[item["image"] for item in shown])["pixel_values"].to(accelerator.device)
            with torch.no_grad():
                generated = processor.batch_decode(best.generate(pixel_values), skip_special_tokens=True)
            save_samples(
                [item["image"] for item in shown],
                generated,
                [item["captions"] for item in shown],
                output_dir / "samples.png",
            )
        save_training_curves(state["history"], output_dir / "training_curves.png")
        human = f"{agreement['CIDEr-D']:.4f}" if agreement else "n/a: one reference per image"
        print(f"test captions: {format_diagnostics(test_diagnostics)}")
        print(
            f"test CIDEr-D {test_metrics['CIDEr-D']:.4f} (human agreement {human}), "
            f"BLEU-4 {test_metrics['BLEU-4']:.4f}; model: {output_dir}; metrics: {output_dir / 'metrics.json'}; "
            f"pictures: {output_dir / 'samples.png'}, {output_dir / 'training_curves.png'}"
        )
    accelerator.wait_for_everyone()  # all processes end together, once the main one has written everything
    accelerator.end_training()
    return report


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
