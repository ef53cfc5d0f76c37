"""The training loop's pieces: one epoch of steps (`train_one_epoch`), the end of an epoch (`finish_epoch`: validation
captions scored, the best model kept, a checkpoint), and what a step adds up without waiting for the device."""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import torch
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from captioning.data.web.streams import format_report
from captioning.evaluation.command import generate_captions
from captioning.evaluation.diagnostics import caption_diagnostics, format_diagnostics
from captioning.evaluation.metrics import compute_caption_metrics
from captioning.training.checkpoints import checkpoint_dir, save_checkpoint
from captioning.training.data import TrainingData
from captioning.training.feature_cache import FeatureCache, cached_vision_features
from captioning.training.losses import caption_loss
from captioning.training.models import save_model
from captioning.training.optimization import StepPlan
from captioning.training.time_budget import PlannedDecay, TimeBudget
from captioning.training.unfreezing import UnfreezingSchedule, train_mode

logger = logging.getLogger("train")


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
    trained on at zero weight (see `training_step`)."""
    image = PIL.Image.new("RGB", (config.image_size, config.image_size))
    pixel_values = image_processor([image], return_tensors="pt")["pixel_values"]
    labels = torch.tensor([[config.eos_token_id]])
    return {
        "pixel_values": pixel_values.to(device),
        "labels": labels.to(device),
        "decoder_attention_mask": torch.ones_like(labels).to(device),
    }


@dataclass
class Run:
    """Everything the loop reads and the state it advances; `state` is what a checkpoint saves."""

    args: object
    accelerator: object
    model: torch.nn.Module  # prepared (DDP, FSDP, DeepSpeed)
    forward: object  # the prepared model, or its torch.compile'd forward
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    data: TrainingData
    schedule: UnfreezingSchedule
    processor: object
    validation: object
    plan: StepPlan
    planned_decay: PlannedDecay | None
    state: dict
    channels_last: bool = False
    tallies: StepTallies = field(default_factory=StepTallies)
    placeholder: dict | None = None

    def __post_init__(self):
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self.output_dir = Path(self.args.output_dir)
        self.checkpoint_dir = checkpoint_dir(self.output_dir)
        steps = self.args.checkpointing_steps
        self.checkpoint_every = None if steps == "epoch" else int(steps)
        if self.state["planned_steps"] is not None:
            self.plan.max_train_steps = self.state["planned_steps"]
        minutes = self.args.max_train_minutes
        self.budget = None if minutes is None else TimeBudget(60 * minutes, self.state["train_seconds"])
        self.progress = tqdm(
            total=self.plan.max_train_steps,
            initial=self.state["completed_steps"],
            disable=not self.accelerator.is_local_main_process,
        )
        self.started = time.perf_counter() - self.state["train_seconds"]

    def done(self) -> bool:
        """The step limit (or the budget's plan) is reached, or the time budget has run out on some process."""
        if self.state["completed_steps"] >= self.plan.max_train_steps:
            return True
        if self.budget is None:
            return False
        if self.accelerator.num_processes == 1:
            return self.budget.expired
        # One process going on alone would wait for the others at its next all-reduce forever: all stop together.
        expired = torch.tensor(int(self.budget.expired), device=self.accelerator.device)
        return self.accelerator.reduce(expired, "sum").item() > 0

    def replan(self) -> None:
        """The step --max_train_minutes stops at, planned on the main process and the same on every process; the
        planned decay follows it."""
        planned = self.budget.plan(self.state["completed_steps"], self.plan.updates_per_epoch, self.plan.step_limit)
        planned = broadcast_object_list([planned])[0]
        if planned is None:
            return
        self.state["planned_steps"] = self.plan.max_train_steps = planned
        if self.planned_decay is not None:
            self.planned_decay.total_steps = planned * self.accelerator.num_processes
        self.progress.total = planned
        self.progress.refresh()

    def checkpoint(self, epoch: int) -> None:
        """A checkpoint within `epoch`: the state brought up to now (drops, time, the stream's position)."""
        self.state["dropped"] += self.tallies.take_dropped(self.accelerator)
        if self.budget is not None:
            self.state["train_seconds"] = self.budget.elapsed
        if self.data.streaming:
            self.state["stream"] = self.data.position()
        self.save({**self.state, "epoch": epoch})

    def save(self, state: dict) -> None:
        """Saves `state` with the prepared objects, the feature cache written first."""
        caches = [self.data.cache] if self.data.cache else []
        save_checkpoint(self.accelerator, self.checkpoint_dir, state, self.args.checkpoints_total_limit, caches)

    def close(self) -> float:
        """Ends the progress bar; returns the training time, validation included."""
        self.progress.close()
        return time.perf_counter() - self.started


def train_one_epoch(run: Run, epoch: int) -> None:
    """The optimizer steps of `epoch`, from where the state stopped in it, until it ends or the run is done."""
    args, accelerator, state = run.args, run.accelerator, run.state
    parts = run.schedule.apply(run.unwrapped, epoch)
    train_mode(run.unwrapped, parts)
    frozen_encoder = "encoder" not in parts
    batches = run.data.epoch(epoch, state, frozen_encoder)
    if args.augment and args.with_tracking:
        strength = run.data.collator.augmentation_strength(epoch)
        accelerator.log({"train/augmentation_strength": strength}, step=state["completed_steps"])
    for batch in batches:
        state["batches_in_epoch"] += 1
        if not training_step(run, run.data.take(batch), parts, frozen_encoder):
            continue
        state["completed_steps"] += 1
        run.progress.update(1)
        if run.budget is not None:
            run.budget.step_done()
            if state["planned_steps"] is None and run.budget.timed_steps == 10:
                run.replan()  # a first plan; each epoch's end corrects it
        if state["completed_steps"] % args.logging_steps == 0:
            log_step(run, epoch)
        if run.checkpoint_every and state["completed_steps"] % run.checkpoint_every == 0:
            run.checkpoint(epoch)
        if run.done():
            break


def training_step(run: Run, batch: dict, parts: tuple[str, ...], frozen_encoder: bool) -> bool:
    """One forward and backward (and, at the end of an accumulation, an optimizer step). Returns whether an optimizer
    step completed; False also for a batch no process has a caption token of."""
    args, accelerator, unwrapped = run.args, run.accelerator, run.unwrapped
    run.tallies.dropped += batch.pop("num_dropped", 0)
    share = token_share(accelerator, batch.pop("num_tokens", 0))
    if share is None:  # every image of this step failed to decode, on every process: nothing to learn
        return False
    standing_in = "labels" not in batch
    if standing_in:
        # This process's images all failed to decode, another's did not: it still runs a forward and a backward, at
        # zero weight, so that the gradient all-reduce and the accumulation count stay in step.
        if run.placeholder is None:
            run.placeholder = placeholder_batch(unwrapped.config, run.processor.image_processor, accelerator.device)
        batch = run.placeholder
        unwrapped.eval()  # no BatchNorm statistics from a black image
    cache = run.data.cache if frozen_encoder and not standing_in else None
    inputs = step_inputs(unwrapped, batch, cache, accelerator.device, run.channels_last)
    # Processes average their gradients; weighting each one's token-mean loss by its share of the step's tokens makes
    # that average the token mean over the global batch, as a single process computes it (the optional EOS and
    # attention penalties, weighted alike, come close to their single-process values).
    weight = share * accelerator.num_processes  # with several processes a float64 tensor, cast below
    with accelerator.accumulate(run.model):
        outputs = run.forward(**inputs)
        loss, _ = caption_loss(
            outputs.logits,
            batch["labels"],
            label_smoothing=args.label_smoothing,
            eos_token_id=unwrapped.config.eos_token_id,
            eos_min_length=args.eos_min_length,
            eos_penalty=args.eos_penalty,
        )
        if outputs.attention_penalty is not None:  # Show, Attend and Tell's attention regularisation
            loss = loss + outputs.attention_penalty
        accelerator.backward(loss * (weight.to(loss.dtype) if torch.is_tensor(weight) else weight))
        if accelerator.sync_gradients and args.max_grad_norm:
            trainable = [p for p in run.model.parameters() if p.requires_grad]
            accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad()
    if standing_in:
        train_mode(unwrapped, parts)
    run.tallies.add_loss(loss, share)
    return accelerator.sync_gradients


def log_step(run: Run, epoch: int) -> None:
    """The mean loss since the last logging step, the learning rate and the stage: to the history, bar and trackers."""
    record = {
        "step": run.state["completed_steps"],
        "epoch": epoch,
        "loss": run.tallies.mean_loss(run.accelerator),
        "lr": run.lr_scheduler.get_last_lr()[0],
        "stage": run.schedule.stage_index(epoch) + 1,
    }
    if run.args.augment:
        record["augmentation_strength"] = run.data.collator.augmentation_strength(epoch)
    run.state["history"].append(record)
    run.progress.set_postfix(loss=f"{record['loss']:.3f}", stage=record["stage"])
    if run.args.with_tracking:
        run.accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])


def finish_epoch(run: Run, epoch: int) -> bool:
    """The end of an epoch: the stream's report, validation (the best model kept), the budget's new plan and the
    epoch's checkpoint. Returns whether the run is done."""
    state, accelerator = run.state, run.accelerator
    state["dropped"] += run.tallies.take_dropped(accelerator)
    if run.budget is not None:
        run.budget.begin_validation()
    state["epoch"], state["batches_in_epoch"], state["stream"] = epoch + 1, 0, None
    report = run.data.end_epoch()
    if report is not None:
        log_stream_report(run, epoch, report)
    evaluate_and_keep_best(run, epoch)
    if run.budget is not None:
        state["train_seconds"] = run.budget.elapsed
        run.budget.end_validation()
        run.replan()
    finished = state["completed_steps"] >= run.plan.max_train_steps
    if run.args.checkpointing_steps == "epoch" or finished:
        run.save(state)
    return run.done()


def log_stream_report(run: Run, epoch: int, report: dict) -> None:
    run.state["downloads"].append({"epoch": epoch, **report})
    logger.info(f"epoch {epoch}: training data: {format_report(report)}")
    if run.args.with_tracking:
        scalars = {name: value for name, value in report.items() if isinstance(value, int | float)}
        scalars.update({f"failures/{kind}": count for kind, count in report["failures"].items()})
        data = {f"data/{name}": value for name, value in scalars.items()}
        run.accelerator.log(data, step=run.state["completed_steps"])


def evaluate_and_keep_best(run: Run, epoch: int) -> float:
    """Generates validation captions, scores them on the main process (the same numbers then on every process) and
    saves the model folder when CIDEr-D beats the best so far. Returns the epoch's CIDEr-D."""
    args, accelerator, state = run.args, run.accelerator, run.state
    predictions, references, _, truncated = generate_captions(
        run.model,
        run.processor,
        run.validation,
        accelerator,
        batch_size=args.per_device_eval_batch_size,
        num_workers=args.num_workers,
    )
    metrics = diagnostics = None
    if accelerator.is_main_process:
        expected = len(run.validation)
        metrics = compute_caption_metrics(
            predictions, references, expected_num_images=expected, meteor=not args.no_meteor
        )
        diagnostics = caption_diagnostics(predictions, references, truncated)
    # Scored once, on the main process; every process keeps the same state and joins in saving a new best.
    metrics, diagnostics = broadcast_object_list([metrics, diagnostics])
    cider = metrics["CIDEr-D"]
    state["history"].append({"step": state["completed_steps"], "epoch": epoch, **metrics, **diagnostics})
    scores = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    logger.info(f"epoch {epoch}: validation {scores}")
    logger.info(f"epoch {epoch}: validation captions: {format_diagnostics(diagnostics)}")
    if state["best_cider"] is None or cider > state["best_cider"]:
        state["best_cider"] = cider
        save_model(accelerator, run.model, run.processor, run.output_dir)
        logger.info(f"new best validation CIDEr-D {cider:.4f}: saved {run.output_dir}")
    if args.with_tracking:
        # Every diagnostic is a number (the vocabulary an int); the references' go to validation/references/.
        scalars = {k: v for k, v in metrics.items() if isinstance(v, float)} | diagnostics
        accelerator.log({f"validation/{k}": v for k, v in scalars.items()}, step=state["completed_steps"])
    return cider
