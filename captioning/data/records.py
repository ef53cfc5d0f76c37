"""The bottom of the data stack: one image with all its references (`CaptionRecord`), a split of them
(`CaptionDataset`), its per-pair view (`CaptionPairs`) and the tally of what was skipped (`SkipCounts`)."""

import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from modeling_captioner import load_image

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# How many example file names each skip reason keeps for its report.
EXAMPLES_KEPT = 3


@dataclass
class CaptionRecord:
    """
    One image and all its reference captions.

    Args:
        image_id (`str`): a name for the image, unique within its split (a file name for file datasets).
        image (`str`, `Path` or a callable): the image file, or a function returning the image (a PIL image, numpy
            array or file path) for in-memory datasets. A callable must be picklable to cross into DataLoader
            worker processes (a `functools.partial` of a module-level function is).
        captions (`list[str]`): the reference captions, stripped, none empty.
    """

    image_id: str
    image: str | Path | Callable[[], Any]
    captions: list[str]


@dataclass
class SkipCounts:
    """
    What a split left out, by reason.

    Args:
        missing_image (`int`): annotated images whose file does not exist.
        unreadable_image (`int`): image files that PIL could not open or verify when the split was built.
        empty_caption (`int`): captions that were empty or only whitespace (the image is kept if it has others).
        image_without_captions (`int`): images left with no caption at all.
        failed_to_load (`int`): images that passed the build-time check but could not be decoded when loaded (only
            counted in the process that loads them; see `CaptionCollator`'s `num_dropped` for DataLoader workers).
    """

    missing_image: int = 0
    unreadable_image: int = 0
    empty_caption: int = 0
    image_without_captions: int = 0
    failed_to_load: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict, compare=False, repr=False)

    def add(self, reason: str, example: str | None = None, count: int = 1) -> None:
        """Counts `count` items skipped for `reason` (a field name), keeping a few examples for the report."""
        if reason not in self.reasons():
            raise ValueError(f"Unknown skip reason {reason!r}; expected one of {self.reasons()}.")
        setattr(self, reason, getattr(self, reason) + count)
        if example is not None and len(self.examples.setdefault(reason, [])) < EXAMPLES_KEPT:
            self.examples[reason].append(example)

    @staticmethod
    def reasons() -> tuple[str, ...]:
        return tuple(f.name for f in fields(SkipCounts) if f.name != "examples")

    def as_dict(self) -> dict[str, int]:
        return {reason: getattr(self, reason) for reason in self.reasons()}

    @property
    def total(self) -> int:
        """All skipped items (images and captions together)."""
        return sum(self.as_dict().values())

    def __add__(self, other: "SkipCounts") -> "SkipCounts":
        merged = SkipCounts(**{reason: getattr(self, reason) + getattr(other, reason) for reason in self.reasons()})
        for source in (self, other):
            for reason, names in source.examples.items():
                for name in names:
                    if len(merged.examples.setdefault(reason, [])) < EXAMPLES_KEPT:
                        merged.examples[reason].append(name)
        return merged

    def report(self) -> str:
        """One line, e.g. `skipped 2 missing_image (e.g. a.jpg, b.jpg), 1 empty_caption`, or `nothing skipped`."""
        parts = []
        for reason, count in self.as_dict().items():
            if count:
                examples = self.examples.get(reason)
                parts.append(f"{count} {reason}" + (f" (e.g. {', '.join(examples)})" if examples else ""))
        return "skipped " + ", ".join(parts) if parts else "nothing skipped"


class CaptionDataset(torch.utils.data.Dataset):
    """
    One item per image: `{"image": PIL RGB image, "captions": [...], "image_id": str, "index": int}`.

    Images are loaded on access with `modeling_captioner.load_image` (any mode becomes RGB, EXIF orientation is
    applied). An image that cannot be decoded gives `None` instead of an item and is counted in
    `skipped.failed_to_load`; `CaptionCollator` drops such `None`s and reports how many in `num_dropped`.

    Args:
        records (`list[CaptionRecord]`): the usable images of the split.
        name (`str`): the dataset's name, for messages (e.g. "flickr8k").
        split (`str`): "train", "validation" or "test".
        skipped (`SkipCounts`, *optional*): what was left out while building the split.
        source (`str`, *optional*): where the data came from (a folder, file or Hub id), for messages.
    """

    def __init__(
        self,
        records: list[CaptionRecord],
        name: str = "captions",
        split: str = "train",
        skipped: SkipCounts | None = None,
        source: str | None = None,
    ):
        self.records = records
        self.name = name
        self.split = split
        self.skipped = skipped if skipped is not None else SkipCounts()
        self.source = source
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        try:
            image = load_image(self.load_raw_image(index), where=f"{self.name} {self.split} image {record.image_id}")
        except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as error:
            self.skipped.add("failed_to_load", record.image_id)
            # Warned once per image and process: a bad file is reported where it is met, not silently dropped, and
            # not again every epoch.
            if record.image_id not in self._warned:
                self._warned.add(record.image_id)
                logger.warning("Skipping %s %s image %s: %s", self.name, self.split, record.image_id, error)
            return None
        return {"image": image, "captions": list(record.captions), "image_id": record.image_id, "index": index}

    def item_without_image(self, index: int) -> dict[str, Any]:
        """The item minus its image (no file is read): for callers that already hold the image's features."""
        record = self.records[index]
        return {"captions": list(record.captions), "image_id": record.image_id, "index": index}

    def subset(self, indices: Iterable[int]) -> "CaptionDataset":
        """A `CaptionDataset` of the records at `indices` (e.g. `range(100)` for a quick run); it shares `skipped`
        with this one."""
        records = [self.records[i] for i in indices]
        return CaptionDataset(records, name=self.name, split=self.split, skipped=self.skipped, source=self.source)

    def fingerprint(self) -> str:
        """
        A hex digest of the split's images: their ids and sources (path, size and modification time of files; the
        scene and size of rendered images; the dataset fingerprint and row of 🤗 images). Equal fingerprints mean
        the same pictures in the same order, so features computed from them can be reused.
        """
        digest = hashlib.sha256(f"{self.name}\0{self.split}\0{len(self.records)}".encode())
        for record in self.records:
            digest.update(f"\0{record.image_id}\0{_describe_image(record.image)}".encode())
        return digest.hexdigest()

    def load_raw_image(self, index: int) -> Any:
        """The record's image as stored: a file path, or what its callable returns (raises if it cannot)."""
        image = self.records[index].image
        return image() if callable(image) else image

    @property
    def num_captions(self) -> int:
        return sum(len(record.captions) for record in self.records)

    def all_captions(self) -> list[str]:
        """Every reference caption of the split, in record order (e.g. to build a tokenizer from)."""
        return [caption for record in self.records for caption in record.captions]

    def summary(self) -> str:
        """One line: name, split, images, captions and what was skipped."""
        return f"{self.name} {self.split}: {len(self)} images, {self.num_captions} captions; {self.skipped.report()}"

    def __repr__(self) -> str:
        return f"CaptionDataset(name={self.name!r}, split={self.split!r}, images={len(self)}, source={self.source!r})"


def _describe_image(image: Any) -> str:
    if isinstance(image, str | os.PathLike):
        try:
            stat = os.stat(image)
        except OSError:
            return f"{image}:missing"
        return f"{image}:{stat.st_size}:{stat.st_mtime_ns}"
    if isinstance(image, functools.partial):
        # A partial of render_scene: the function's name (its repr holds a memory address), the frozen scene
        # dataclass and the image size.
        return f"{image.func.__module__}.{image.func.__qualname__}{image.args!r}{image.keywords!r}"
    describe = getattr(image, "describe", None)  # lazy images of a format (formats.hf.HFImage) say who they are
    if callable(describe):
        return describe()
    return f"{type(image).__qualname__}:{id(image)}"  # unknown callables: never equal across runs


class CaptionPairs(torch.utils.data.Dataset):
    """
    A view of a `CaptionDataset` with one item per (image, caption) pair, for training on every pair each epoch.

    Items are the image's item plus `"caption"` (the pair's caption, which `CaptionCollator` trains on) and
    `"caption_index"`; `"captions"` still holds all references and `"index"` the image's index in the dataset.

    Args:
        dataset (`CaptionDataset`): the images and their captions.
    """

    def __init__(self, dataset: CaptionDataset):
        self.dataset = dataset
        self.pairs = [(i, j) for i, record in enumerate(dataset.records) for j in range(len(record.captions))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        image_index, caption_index = self.pairs[index]
        item = self.dataset[image_index]
        if item is None:
            return None
        return {**item, "caption": item["captions"][caption_index], "caption_index": caption_index}

    @property
    def skipped(self) -> SkipCounts:
        return self.dataset.skipped
