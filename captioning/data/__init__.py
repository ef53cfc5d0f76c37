"""Caption datasets for training and evaluation: the built-in synthetic scenes, Flickr8k, Karpathy splits, COCO,
any 🤗 `datasets` dataset (`formats/`) and url–caption files or webdataset shards streamed from the web (`web/`),
each as train/validation/test splits of images with all their reference captions.

Layers, each importing only those above it in this list: `records` (CaptionRecord, CaptionDataset, SkipCounts) →
`splits` (checks, seeded cuts) → `synthetic`, `synthetic_hard` (scene generators) → `formats/` → `web/` →
`loading` (by format name, and the shared flags). The names below are the package's public API.
"""

from captioning.data.loading import (
    add_data_arguments,
    check_data_arguments,
    load_caption_splits,
    load_splits_from_args,
)
from captioning.data.records import SPLITS, CaptionDataset, CaptionPairs, CaptionRecord, SkipCounts
from captioning.data.splits import check_image_file, deterministic_split

__all__ = [
    "SPLITS",
    "CaptionDataset",
    "CaptionPairs",
    "CaptionRecord",
    "SkipCounts",
    "add_data_arguments",
    "check_data_arguments",
    "check_image_file",
    "deterministic_split",
    "load_caption_splits",
    "load_splits_from_args",
]
