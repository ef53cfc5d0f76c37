"""train.py's command line: the flags by group, a --config file (YAML or JSON) under them, and the checks that refuse a
combination that cannot run before anything loads."""

import argparse
import json
import logging
from pathlib import Path

import torch

from captioning.data.loading import add_data_arguments, check_data_arguments
from captioning.data.web.splits import STREAM_FORMATS
from captioning.training.augmentation import FLIP_MODES, SCHEDULE_KINDS, AugmentationSchedule, ImageAugmentation
from captioning.training.unfreezing import OPTIMIZERS
from modeling_captioner import PRESETS

logger = logging.getLogger("train")
SCHEDULERS = ("inverse_sqrt", "cosine", "linear", "constant", "constant_with_warmup")


def parse_args(argv=None, description: str | None = None) -> argparse.Namespace:
    """train.py's arguments: flags over the --config file over the defaults, checked (SystemExit with a sentence)."""
    parser = argparse.ArgumentParser(description=description)
    for add in (
        add_training_data_arguments,
        add_model_arguments,
        add_optimization_arguments,
        add_precision_arguments,
        add_speed_arguments,
        add_augmentation_arguments,
        add_run_arguments,
        add_generation_arguments,
    ):
        add(parser)
    parser.add_argument("--config", default=None, help="A YAML or JSON file of these arguments (flags override it).")

    args = parser.parse_args(argv)
    if args.config:
        defaults = read_config_file(args.config, parser)
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    check_args(args)
    return neutral_length_penalty(args)


def add_training_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset flags and how training reads the data."""
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


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """What model trains: a preset's random model, pretrained parts, or a saved captioner."""
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


def add_optimization_arguments(parser: argparse.ArgumentParser) -> None:
    """Steps, batch sizes, the optimizer, its schedule and the loss."""
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


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """The feature cache, precision, device and seed."""
    optim = parser.add_argument_group("feature cache, precision and device")
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


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """torch.compile and gradient checkpointing."""
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


def add_augmentation_arguments(parser: argparse.ArgumentParser) -> None:
    """Training-image augmentation and its ramp."""
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


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Output, checkpoints, tracking and logging."""
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


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """How validation captions are generated (also the saved generation_config)."""
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


def max_new_tokens_value(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of tokens or 'auto', got {value!r}")
    return int(value)


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


def neutral_length_penalty(args: argparse.Namespace) -> argparse.Namespace:
    """Length normalisation ranks finished beams; greedy search has none (and transformers refuses to save a generation
    config with a length_penalty but no beams), so with --num_beams 1 the saved and reported value is the neutral 1."""
    if args.num_beams != 1:
        return args
    if args.length_penalty not in (0.6, 1.0):  # not the default: the user asked for one
        logger.warning(f"--length_penalty {args.length_penalty} has no effect with --num_beams 1; saving 1.0.")
    return with_values(args, length_penalty=1.0)


def augmentation_of(args) -> tuple[ImageAugmentation | None, AugmentationSchedule]:
    """The collator's augmentation (None without --augment) and its schedule, from the --augment_* flags."""
    try:
        schedule = AugmentationSchedule(args.augment_schedule, args.augment_max_strength, args.augment_ramp_epochs)
        return (ImageAugmentation(flip=args.augment_flip) if args.augment else None), schedule
    except ValueError as error:
        raise SystemExit(f"{error} (see the --augment_* flags)") from error


def with_values(args: argparse.Namespace, **values) -> argparse.Namespace:
    """A copy of `args` with `values` set: what the run resolves (after Accelerate starts, after the tokenizer is
    built) goes into a new namespace, so the parsed one never changes under the code that read it."""
    return argparse.Namespace(**{**vars(args), **values})
