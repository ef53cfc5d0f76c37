"""A run's training data behind one interface, indexed or streamed: one iterator per epoch, which resumes where a
checkpoint stopped, and a report of the epoch's reading."""

import logging
import math
from pathlib import Path

import torch
from accelerate.data_loader import SeedableRandomSampler
from accelerate.utils import gather_object
from torch.utils.data import DataLoader

from captioning.data.loading import load_splits_from_args
from captioning.data.records import CaptionPairs
from captioning.data.web.splits import STREAM_FORMATS
from captioning.data.web.streams import StreamCollator, StreamLoader, StreamProgress, sum_reports
from captioning.training.arguments import augmentation_of
from captioning.training.collator import CaptionCollator
from captioning.training.feature_cache import FeatureCache, cache_key
from captioning.training.models import input_image_size
from captioning.training.setup import data_seed

logger = logging.getLogger("train")


def load_training_splits(args, accelerator) -> dict:
    """Every split, read and checked before any training starts. A streamed source's training rows are read as they
    stream, each process its share; its validation and test images are fetched once."""
    if args.dataset_format not in STREAM_FORMATS:
        splits = load_splits_from_args(args)
    else:
        splits = load_splits_from_args(
            args,
            image_side=input_image_size(args),
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
            num_workers=args.num_workers,
        )
    for name, split in splits.items():
        logger.info(f"{name}: {split.summary()}")
    return splits


def training_split(splits: dict, args):
    """The split that trains: --max_train_samples of an indexed one (a stream applies it while reading its rows)."""
    if args.dataset_format in STREAM_FORMATS:
        return splits["train"]
    return first(splits["train"], args.max_train_samples)


def first(split, count: int | None):
    """The first `count` items of an indexed split (all of them for None)."""
    return split if count is None else split.subset(range(min(count, len(split))))


def training_sampler(num_items: int, seed: int) -> SeedableRandomSampler:
    """The shuffle train.py reads its epochs in (Accelerate's seedable sampler with the run's data seed; `set_epoch`
    picks the epoch), for code that wants the same order outside train.py (benchmarks, tests)."""
    return SeedableRandomSampler(range(num_items), data_seed=data_seed(seed))


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


def feature_cache_for(args, accelerator, split, model, processor, schedule, streaming: bool) -> FeatureCache | None:
    """The backbone-feature cache of the training images, where one can serve: a stage with a frozen encoder, one
    item per image, un-augmented images of a fixed set, and one process writing it."""
    frozen_stage = any("encoder" not in stage.parts for stage in schedule.stages)
    if not frozen_stage or args.no_feature_cache or args.all_pairs:
        return None
    if streaming or args.augment:
        # Cached features are of un-augmented images, kept by index in a file of the split's size.
        why = "a streamed source has no fixed set of images" if streaming else "they come from un-augmented images"
        logger.info(f"feature cache: off ({why}); the frozen backbone runs on every batch")
        return None
    if accelerator.num_processes > 1:
        logger.info(
            f"feature cache: off with {accelerator.num_processes} processes (they would all write one cache file); "
            "the frozen backbone runs on every batch"
        )
        return None
    key = cache_key(model.encoder.backbone, processor.image_processor, split.fingerprint())
    return FeatureCache(args.feature_cache_dir or Path(args.output_dir) / "feature_cache", key, len(split))


def caption_collator(args, processor, model, split) -> CaptionCollator:
    augmentation, augmentation_schedule = augmentation_of(args)
    if args.captions_per_image > 1:
        fewest = min(len(record.captions) for record in split.records)
        if fewest < args.captions_per_image:
            raise SystemExit(
                f"--captions_per_image {args.captions_per_image}: some training images have only {fewest} "
                "reference(s)."
            )
    return CaptionCollator(
        processor,
        max_length=model.config.max_position_embeddings,
        seed=args.seed,
        augmentation=augmentation,
        augmentation_schedule=augmentation_schedule,
        captions_per_image=args.captions_per_image,
    )


class TrainingData:
    """
    The training images of a run and how each epoch reads them.

    Indexed (a `CaptionDataset`, maybe as image–caption pairs or with cached features): one shuffle per (seed, epoch)
    by Accelerate's seedable sampler, which deals batch i to process i mod N; a resumed epoch skips the batches the
    checkpoint already saw. Streamed (a `CaptionStream`): each process reads its own shards, and a resumed epoch
    leaves out the rows the checkpoint's batches held (not a replay). Either way `epoch(...)` gives the batches of one
    epoch, `position()` where a checkpoint stops, and `end_epoch()` the epoch's reading report (streams).
    """

    def __init__(self, args, accelerator, split, model, processor, schedule):
        self.split, self.accelerator = split, accelerator
        self.streaming = args.dataset_format in STREAM_FORMATS
        self.pin_memory = accelerator.device.type == "cuda"
        self.cache = feature_cache_for(args, accelerator, split, model, processor, schedule, self.streaming)
        self.items = CaptionPairs(split) if args.all_pairs else split
        if self.cache is not None:
            self.items = CachedFeatures(split, self.cache)
        self.collator = caption_collator(args, processor, model, split)
        self.progress = StreamProgress.of(split) if self.streaming else None
        self.batch_size = args.per_device_train_batch_size
        self.loader = DataLoader(
            self.items,
            batch_size=self.batch_size,
            # Indexed: Accelerate swaps the RandomSampler for its seedable one (see start_accelerator).
            shuffle=not self.streaming,
            collate_fn=StreamCollator(self.collator) if self.streaming else self.collator,
            num_workers=args.num_workers,
            pin_memory=self.pin_memory,
            # A stream keeps its workers from epoch to epoch: no fork of the training process, no new downloader
            # start-up per epoch.
            persistent_workers=self.streaming and args.num_workers > 0,
        )

    def batches_per_process(self) -> int:
        """Batches each process takes per epoch, the same on all: an indexed epoch whose batches do not divide evenly
        is topped up from its start (Accelerate's even_batches); a stream is padded to max(1, num_workers) ×
        ceil(rows of the longest shard / batch size), a shard being a process's worker."""
        if self.streaming:
            return self.split.batches_per_epoch(self.batch_size)
        return math.ceil(len(self.loader) / self.accelerator.num_processes)

    def prepare(self, model, optimizer, lr_scheduler):
        """`accelerator.prepare` with the loader; a stream's loader is not split again (the stream deals its rows)."""
        if self.streaming:
            prepared = self.accelerator.prepare(model, optimizer, lr_scheduler)
            self.loader = StreamLoader(self.loader, self.accelerator.device, non_blocking=self.pin_memory)
            return prepared
        model, optimizer, self.loader, lr_scheduler = self.accelerator.prepare(
            model, optimizer, self.loader, lr_scheduler
        )
        return model, optimizer, lr_scheduler

    def epoch(self, epoch: int, state: dict, frozen_encoder: bool):
        """The batches of `epoch`, from where `state` stopped within it."""
        if isinstance(self.items, CachedFeatures):
            self.items.enabled = frozen_encoder
        # Through the prepared loader, not the sampler: the loader sets its sampler's epoch to its own count of
        # passes when iterated, which a resumed run restarts from 0.
        self.loader.set_epoch(epoch)
        self.collator.set_epoch(epoch)
        if self.streaming:
            position = state["stream"] if state["batches_in_epoch"] else None
            try:
                self.split.set_position(position)
            except ValueError as error:
                raise SystemExit(f"--resume_from_checkpoint: {error}") from error
            self.progress.start_epoch(epoch, position)
            return self.progress.timed(self.loader)
        if state["batches_in_epoch"]:
            return self.accelerator.skip_first_batches(self.loader, state["batches_in_epoch"])
        return self.loader

    def take(self, batch: dict) -> dict:
        """The batch without the stream's bookkeeping, which goes to the epoch's progress."""
        if self.streaming:
            self.progress.update(batch.pop("stream"))
        return batch

    def position(self):
        """Where a checkpoint taken now stops in the stream (None for indexed data: the batch count says it)."""
        return self.progress.position(self.accelerator) if self.streaming else None

    def end_epoch(self) -> dict | None:
        """Writes the feature cache; returns the epoch's reading report of a stream, summed over processes."""
        if self.cache is not None:
            self.cache.flush()
        if not self.streaming:
            return None
        report = self.progress.report()
        if self.accelerator.num_processes > 1:
            report = sum_reports(gather_object([report]), processes=True)
        return report
