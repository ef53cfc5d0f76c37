"""Starting a run: Accelerate (device, processes, precision, accumulation) and the settings that follow from it."""

import argparse
import logging
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, get_int_from_env, set_seed

from captioning.data.web.shards import expand_shards
from captioning.training.arguments import with_values

logger = logging.getLogger("train")
# Accelerate's seedable sampler shuffles epoch e with seed data_seed + e; spacing the runs' seeds this far apart keeps
# run s's epoch e from replaying run s + 1's epoch e − 1.
DATA_SEED_STRIDE = 1_000_003


def data_seed(seed: int) -> int:
    """The shuffling seed of a run seeded `seed` (Accelerate's `DataLoaderConfiguration.data_seed`)."""
    return seed * DATA_SEED_STRIDE


def start_accelerator(args: argparse.Namespace) -> tuple[Accelerator, argparse.Namespace]:
    """
    The run's Accelerator, and `args` as the run uses them: the accumulation and mixed precision that `accelerate
    launch` may have set instead, and the DataLoader workers for this device. Also sets up logging and the seed,
    creates the output folder, and stops with a sentence when a launch would train N unconnected copies.
    """
    mixed_precision = default_mixed_precision(args)
    accelerator = Accelerator(
        cpu=args.cpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(
            # With the DataLoaders' pinned memory on a GPU: a batch copies to the GPU while the previous step runs.
            non_blocking=on_cuda(args),
            # One shuffle per (seed, epoch) for all processes, so a resumed run replays the same order.
            use_seedable_sampler=True,
            data_seed=data_seed(args.seed),
        ),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logger.setLevel(logging.WARNING)
    check_launch(accelerator)
    # What the run actually uses: `accelerate launch` can set both (its config file, ACCELERATE_* variables).
    resolved = {
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "mixed_precision": accelerator.mixed_precision,
    }
    for name, value in resolved.items():
        if getattr(args, name) not in (None, value):
            logger.warning(f"--{name} {getattr(args, name)} is overridden by the accelerate launch setting {value}")
    logger.info(f"mixed precision: {accelerator.mixed_precision} ({precision_chosen_by(args, mixed_precision)})")
    workers = default_num_workers(args, accelerator.device, accelerator.num_processes)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    return accelerator, with_values(args, num_workers=workers, **resolved)


def check_launch(accelerator: Accelerator) -> None:
    launched = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)
    if launched > 1 and accelerator.num_processes == 1:
        raise SystemExit(
            f"{launched} processes were launched but Accelerate joined none of them into one run (it found no GPU and "
            "--cpu was not given), so each would train alone and overwrite the others' files. On a machine without "
            "GPUs pass --cpu to train.py (see configs/accelerate/cpu-2proc.yaml)."
        )


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


def precision_chosen_by(args, mixed_precision: str | None) -> str:
    if args.mixed_precision is not None:
        return "--mixed_precision"
    if mixed_precision is None:
        return "the accelerate launch config"
    return "the default on this device: bf16 on a GPU with bf16 arithmetic, fp16 on another GPU, none on a CPU"


def on_cuda(args) -> bool:
    """Whether the run trains on a CUDA GPU: Accelerate takes one where there is one, unless --cpu."""
    return torch.cuda.is_available() and not args.cpu


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity, which a container or `taskset` narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    workers = max(1, min(8, cpu_cores() // get_int_from_env(["LOCAL_WORLD_SIZE"], 1)))
    if args.dataset_format == "webdataset":
        # The last shard is held out for validation and test unless both are given (load_web_splits).
        held_out = 0 if args.validation_files and args.test_files else 1
        training_shards = len(expand_shards(args.data_files)) - held_out
        workers = min(workers, max(1, training_shards // num_processes))
    return workers
