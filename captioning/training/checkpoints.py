"""Checkpoints that a killed run never loses: saved to a temporary folder and renamed, the newest N kept, and resumed
exactly (the same batches, random states and schedule as a run that never stopped).

Accelerate's own automatic checkpoint naming (ProjectConfiguration) saves in place, so a run killed mid-save would
leave a half-written newest checkpoint for `--resume_from_checkpoint latest` to pick; these are named step_N and
appear only once whole."""

import json
import logging
import shutil
from pathlib import Path

from captioning.training.feature_cache import FeatureCache

logger = logging.getLogger("train")


def new_state(num_processes: int) -> dict:
    """The training state saved with every checkpoint (training_state.json), at the start of a run."""
    return {
        "completed_steps": 0,
        "epoch": 0,
        "batches_in_epoch": 0,
        "best_cider": None,
        "history": [],
        "dropped": 0,
        "num_processes": num_processes,
        "stream": None,  # where a mid-epoch checkpoint stopped in a streamed source (StreamProgress.position)
        "downloads": [],  # one report per epoch of a streamed source (StreamProgress.report, all processes)
        "train_seconds": 0.0,  # training and validation time so far, what --max_train_minutes counts
        "planned_steps": None,  # where --max_train_minutes plans to stop
    }


def checkpoint_dir(output_dir: str | Path) -> Path:
    """Where a run's checkpoints go (and `--resume_from_checkpoint latest` looks)."""
    return Path(output_dir) / "checkpoints"


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


def resume(accelerator, checkpoint: str | None, directory: Path, state: dict) -> dict:
    """The state to start from: `state` without `checkpoint`, else the checkpoint's (a folder, or "latest" in
    `directory`), after loading its model, optimizer, scheduler and random states into the prepared objects."""
    if not checkpoint:
        return state
    path = Path(checkpoint)
    if checkpoint == "latest":
        found = list_checkpoints(directory)
        path = found[-1] if found else None
    if path is None:
        logger.info(f"no checkpoint in {directory}: starting from scratch")
        return state
    if not (path / "training_state.json").is_file():
        raise SystemExit(f"--resume_from_checkpoint {path}: not a checkpoint folder of this script.")
    saved = json.loads((path / "training_state.json").read_text())
    saved_processes = saved.get("num_processes", 1)
    if saved["batches_in_epoch"] and saved_processes != accelerator.num_processes:
        raise SystemExit(
            f"--resume_from_checkpoint {path}: saved mid-epoch by {saved_processes} process(es), resumed with "
            f"{accelerator.num_processes}; the batches already seen depend on the number of processes, so "
            "resume with the same number, or from a checkpoint saved at the end of an epoch."
        )
    accelerator.load_state(str(path))
    logger.info(f"resumed from {path}: epoch {saved['epoch']}, step {saved['completed_steps']}")
    # Checkpoints of earlier releases lack the newer fields; the number of processes is this run's.
    return {**new_state(accelerator.num_processes), **saved, "num_processes": accelerator.num_processes}
