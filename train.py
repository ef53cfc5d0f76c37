"""Train a captioner with Accelerate (CPU, one GPU, many GPUs, many nodes): data → model → staged unfreezing → AdamW →
checkpoints (resume-exact) → validation CIDEr-D each epoch → the best model folder, test metrics, predictions and
pictures. `accelerate launch --config_file configs/accelerate/<setup>.yaml train.py ...` runs it on several processes;
the global batch is per_device_train_batch_size × processes × gradient_accumulation_steps.

The pieces live in captioning/training/: arguments, setup (Accelerate), data, models, optimization, checkpoints, loop
(one epoch, the end of an epoch) and final (the test split)."""

import json
import logging
import sys
from pathlib import Path

from captioning.training.arguments import parse_args
from captioning.training.checkpoints import checkpoint_dir, new_state, resume
from captioning.training.data import TrainingData, first, load_training_splits, training_split
from captioning.training.final import final_evaluation
from captioning.training.loop import Run, finish_epoch, train_one_epoch
from captioning.training.models import (
    build_model,
    build_tokenizer_for,
    compiled,
    configure_generation,
    prepare_for_strategy,
    set_up_speed,
    unfreezing_schedule,
)
from captioning.training.optimization import build_lr_scheduler, build_optimizer, plan_steps
from captioning.training.setup import start_accelerator
from captioning.training.unfreezing import adamw_implementation
from modeling_captioner import CaptionerProcessor, build_image_processor

logger = logging.getLogger("train")


def main(argv=None) -> dict:
    args = parse_args(argv, description=__doc__)
    accelerator, args = start_accelerator(args)

    # Data: every split is read and checked before anything trains.
    splits = load_training_splits(args, accelerator)
    train_split = training_split(splits, args)
    train_captions = train_split.all_captions()

    # Model, its generation settings and the unfreezing schedule.
    tokenizer = build_tokenizer_for(args, train_captions)
    model, encoder_pretrained, decoder_pretrained = build_model(args, tokenizer)
    processor = CaptionerProcessor(build_image_processor(model.config), tokenizer)
    args = configure_generation(model, tokenizer, train_captions, args)
    schedule = unfreezing_schedule(args, encoder_pretrained, decoder_pretrained)
    stages = schedule.describe(model)
    logger.info("unfreezing schedule:\n" + stages)
    if args.dry_run:
        print(stages)
        return {"schedule": stages}
    if accelerator.is_main_process:
        # The resolved arguments; `--config OUTPUT_DIR/training_args.json` repeats the run, and the model card reads it.
        (Path(args.output_dir) / "training_args.json").write_text(json.dumps(vars(args), indent=2))
    data = TrainingData(args, accelerator, train_split, model, processor, schedule)
    channels_last = set_up_speed(model, args, accelerator)

    # Schedule: the steps, AdamW over the unfreezing groups, the learning rate.
    optimizer = build_optimizer(model, schedule, args, accelerator)
    plan = plan_steps(args, data.batches_per_process(), accelerator)
    lr_scheduler, planned_decay = build_lr_scheduler(args, optimizer, plan, accelerator)

    # Accelerate: wrap for the strategy, load a checkpoint, start the trackers.
    prepare_for_strategy(accelerator, model, schedule)
    model, optimizer, lr_scheduler = data.prepare(model, optimizer, lr_scheduler)
    if args.with_tracking:
        scalars = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("captioner", scalars)
    directory = checkpoint_dir(args.output_dir)
    state = resume(accelerator, args.resume_from_checkpoint, directory, new_state(accelerator.num_processes))
    # What runs: --optim, except with fp16 loss scaling (build_adamw) or after a resume (the checkpoint's).
    why = ", fp16 loss scaling" if accelerator.scaler is not None else ""
    logger.info(f"AdamW: {adamw_implementation(optimizer)} (--optim {args.optim}{why}; a resumed run keeps its own)")

    # The loop: an epoch of steps, then validation, the best model and a checkpoint.
    validation = first(splits["validation"], args.max_eval_samples)
    forward = compiled(model, args, accelerator)
    run = Run(
        args,
        accelerator,
        model,
        forward,
        optimizer,
        lr_scheduler,
        data,
        schedule,
        processor,
        validation,
        plan,
        planned_decay,
        state,
        channels_last,
    )
    for epoch in range(state["epoch"], plan.num_epochs):
        train_one_epoch(run, epoch)
        if finish_epoch(run, epoch):
            break
    train_seconds = run.close()
    # Let go of the DDP wrapper, which holds the process group: end_training() then destroys the group from Python,
    # which releases the GIL while Gloo's worker threads finish. Left to the interpreter's exit, the wrapper's
    # teardown joins those threads holding the GIL, and one still freeing a gathered tensor waits for it forever
    # (pytorch/pytorch#190489; seen as a 1-in-10 hang at exit with two CPU processes).
    del model, forward, optimizer, lr_scheduler, run
    accelerator.free_memory()

    return final_evaluation(args, accelerator, splits, state, train_seconds)


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
