"""How far a run goes and how it steps: the step plan (steps per epoch, in all, epochs), AdamW over the unfreezing
schedule's parameter groups, and the learning-rate schedule (planned to the time budget with --max_train_minutes)."""

import logging
import math
from dataclasses import dataclass

import torch
from transformers import get_scheduler

from captioning.training.time_budget import PLANNED_SCHEDULES, PlannedDecay
from captioning.training.unfreezing import UnfreezingSchedule, build_adamw, optimizer_groups

logger = logging.getLogger("train")


@dataclass
class StepPlan:
    """Optimizer steps per epoch and in all. `max_train_steps` may shrink as the run goes (--max_train_minutes plans
    it); `step_limit` is the epoch or step limit, which a plan never passes."""

    updates_per_epoch: int
    max_train_steps: int
    num_epochs: int
    step_limit: int


def plan_steps(args, batches_per_process: int, accelerator) -> StepPlan:
    updates_per_epoch = math.ceil(batches_per_process / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    logger.info(
        f"global batch: {global_batch_size(args, accelerator)} images per optimizer step = {args.per_device_train_batch_size} per process × "
        f"{accelerator.num_processes} process(es) × {args.gradient_accumulation_steps} accumulation step(s); "
        f"{updates_per_epoch} steps per epoch, {max_train_steps} in all"
    )
    return StepPlan(
        updates_per_epoch, max_train_steps, math.ceil(max_train_steps / updates_per_epoch), max_train_steps
    )


def global_batch_size(args, accelerator) -> int:
    """Images per optimizer step, all processes and accumulation steps together."""
    return args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps


def build_optimizer(model, schedule: UnfreezingSchedule, args, accelerator) -> torch.optim.Optimizer:
    """AdamW (--optim) over the parts of the schedule (a parameter group each); fp16 loss scaling takes the unfused kernel."""
    return build_adamw(
        optimizer_groups(model, schedule, args.learning_rate, args.weight_decay),
        accelerator.device,
        args.optim,
        loss_scaling=accelerator.scaler is not None,
    )


def build_lr_scheduler(args, optimizer, plan: StepPlan, accelerator) -> tuple[object, PlannedDecay | None]:
    """Warmup then --lr_scheduler_type. With --max_train_minutes a cosine or linear decay's length is planned from the
    time budget as the run goes (the returned PlannedDecay, saved with the scheduler's state). Accelerate steps the
    scheduler once per process at every optimizer step, hence the step counts × processes."""
    warmup = args.num_warmup_steps * accelerator.num_processes
    total = plan.max_train_steps * accelerator.num_processes
    if args.max_train_minutes is not None and args.lr_scheduler_type in PLANNED_SCHEDULES:
        planned_decay = PlannedDecay(args.lr_scheduler_type, warmup, total)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, planned_decay), planned_decay
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=total
    )
    return scheduler, None
