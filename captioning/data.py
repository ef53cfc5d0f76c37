"""Caption datasets for training and evaluation: the built-in synthetic scenes, Flickr8k, Karpathy splits, COCO and
any 🤗 `datasets` dataset, each as train/validation/test splits of images with all their reference captions."""

import csv
import functools
import hashlib
import io
import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from captioning.synthetic import DEFAULT_SYNTHETIC_IMAGE_SIZE, build_synthetic_splits, render_scene
from captioning.synthetic_hard import DEFAULT_HARD_IMAGE_SIZE, build_hard_synthetic_splits, render_hard_scene
from modeling_captioner import load_image

logger = logging.getLogger(__name__)

FORMATS = ("synthetic", "flickr8k", "karpathy", "coco", "hf")
SPLITS = ("train", "validation", "test")
# The built-in synthetic sets: variant → (split builder, renderer, default image size, smallest image size). "easy":
# 1–3 shapes of one kind in one region (fast tests, the demo); "hard": 2–5 drawn objects of ten kinds with
# relations, backgrounds, degradations and five annotator styles (captioning.synthetic_hard).
SYNTHETIC_VARIANTS = {
    "easy": (build_synthetic_splits, render_scene, DEFAULT_SYNTHETIC_IMAGE_SIZE, 8),
    "hard": (build_hard_synthetic_splits, render_hard_scene, DEFAULT_HARD_IMAGE_SIZE, 16),
}
# Where no official split exists: train / validation / test shares, Flickr8k's 6000/1000/1000 rounded.
DEFAULT_SPLIT_FRACTIONS = (0.75, 0.125, 0.125)
# How many example file names each skip reason keeps for its report.
_EXAMPLES_KEPT = 3


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
        if example is not None and len(self.examples.setdefault(reason, [])) < _EXAMPLES_KEPT:
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
                    if len(merged.examples.setdefault(reason, [])) < _EXAMPLES_KEPT:
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
    if isinstance(image, HFImage):
        return f"hf:{getattr(image.dataset, '_fingerprint', None)}:{image.row}"
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


# ---------------------------------------------------------------------------------------------------------------
# Building splits from image files
# ---------------------------------------------------------------------------------------------------------------


def check_image_file(path: str | os.PathLike, decode: bool = False) -> str | None:
    """
    Why an image file is unusable, or `None` if it looks fine.

    Args:
        path: the image file.
        decode (`bool`, *optional*, defaults to `False`): `False` runs PIL's `verify()` (reads the header and, for
            PNG, checks every chunk; cheap). `True` decodes all pixels too, which also catches truncated JPEGs.
    """
    try:
        with PIL.Image.open(path) as image:
            if decode:
                image.load()
            else:
                image.verify()
    # PIL raises many types for damaged files (OSError, SyntaxError, struct.error, IndexError, ...): any of them
    # means the file is unusable, and the reason is kept for the report.
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def _verify_mode(verify_images: bool | str) -> tuple[bool, bool]:
    if verify_images in (True, False):
        return bool(verify_images), False
    if verify_images == "decode":
        return True, True
    raise ValueError(f"verify_images={verify_images!r}: expected True, False or 'decode'.")


def _usable_captions(raw: Iterable[Any], skipped: SkipCounts, image_id: str) -> list[str]:
    captions = []
    for caption in raw:
        text = caption.strip() if isinstance(caption, str) else ""
        if text:
            captions.append(text)
        else:
            skipped.add("empty_caption", image_id)
    return captions


def _file_split(
    entries: Iterable[tuple[str, Path, Sequence[Any]]],
    name: str,
    split: str,
    source: str,
    verify_images: bool | str,
) -> CaptionDataset:
    """Keeps the entries (image id, file, raw captions) whose captions and image file are usable, counting the
    others."""
    verify, decode = _verify_mode(verify_images)
    skipped = SkipCounts()
    records = []
    for image_id, path, raw_captions in entries:
        captions = _usable_captions(raw_captions, skipped, image_id)
        if not captions:
            skipped.add("image_without_captions", image_id)
            continue
        if not path.is_file():
            skipped.add("missing_image", image_id)
            continue
        if verify:
            problem = check_image_file(path, decode=decode)
            if problem is not None:
                skipped.add("unreadable_image", image_id)
                logger.debug("Skipping %s: %s", path, problem)
                continue
        records.append(CaptionRecord(image_id, str(path), captions))
    return _finish_split(records, name, split, source, skipped)


def _finish_split(
    records: list[CaptionRecord], name: str, split: str, source: str, skipped: SkipCounts
) -> CaptionDataset:
    if not records:
        raise ValueError(
            f"The {name} dataset at {source} has no usable image in its {split} split ({skipped.report()}); "
            f"check that the images and the annotations belong together."
        )
    dataset = CaptionDataset(records, name=name, split=split, skipped=skipped, source=source)
    if skipped.total:
        logger.warning("%s (%s)", dataset.summary(), source)
    else:
        logger.info("%s (%s)", dataset.summary(), source)
    return dataset


def deterministic_split(
    keys: Iterable[Any], seed: int, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS
) -> dict[str, list[Any]]:
    """
    Splits keys into train/validation/test by seed: sorted, shuffled with the seed, then cut by `fractions`.

    The result depends only on the set of keys and the seed (not on their order, on bad files or on anything
    else), so a run and its resumption see the same split. With at least three keys no split is empty.
    """
    fractions = _check_fractions(fractions)
    order = sorted(set(keys))
    random.Random(f"captioner-split:{seed}").shuffle(order)
    total = len(order)
    n_test, n_validation = (round(total * fraction) for fraction in (fractions[2], fractions[1]))
    if total >= 3:
        n_test, n_validation = max(n_test, int(fractions[2] > 0)), max(n_validation, int(fractions[1] > 0))
    keep_for_train = int(total >= 3 and fractions[0] > 0)
    n_test = min(n_test, total - keep_for_train)
    n_validation = min(n_validation, total - keep_for_train - n_test)
    return {
        "test": order[:n_test],
        "validation": order[n_test : n_test + n_validation],
        "train": order[n_test + n_validation :],
    }


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not 0.999 <= sum(fractions) <= 1.001:
        raise ValueError(
            f"split_fractions={tuple(fractions)!r}: expected three non-negative (train, validation, test) shares "
            f"summing to 1."
        )
    return tuple(float(f) for f in fractions)


def _directory(data_dir: str | os.PathLike | None, dataset_format: str, expected: str) -> Path:
    if data_dir is None:
        raise ValueError(f"The {dataset_format} format needs data_dir: a folder with {expected}.")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"{dataset_format} data_dir {root} does not exist or is not a folder; expected {expected}."
        )
    return root


def _first_existing(candidates: Iterable[Path]) -> Path | None:
    return next((path for path in candidates if path.exists()), None)


def _images_folder(
    root: Path,
    images_dir: str | os.PathLike | None,
    candidates: Sequence[str],
    what: str,
    probe: str | None = None,
) -> Path:
    """`images_dir` (relative to `root`) if given, else the first candidate folder holding the file `probe` (an
    annotated image), else the first candidate folder that exists."""
    if images_dir is not None:
        folder = Path(images_dir).expanduser()
        folder = folder if folder.is_absolute() else root / folder
        if not folder.is_dir():
            raise FileNotFoundError(f"images_dir {folder} does not exist or is not a folder; expected {what}.")
        return folder
    folders = [root / candidate for candidate in candidates if (root / candidate).is_dir()]
    folder = next((f for f in folders if probe and (f / probe).is_file()), folders[0] if folders else None)
    if folder is None:
        raise FileNotFoundError(
            f"No image folder in {root}: expected {what} ({' or '.join(candidates)}), or pass images_dir."
        )
    return folder


def _reject_options(dataset_format: str, options: dict[str, Any], known: Sequence[str]) -> None:
    if options:
        raise TypeError(
            f"Unknown option(s) {sorted(options)} for the {dataset_format} format; it takes "
            f"{', '.join(known) if known else 'no extra options'}."
        )


# ---------------------------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------------------------


def _load_synthetic(
    seed: int,
    variant: str = "easy",
    sizes: dict[str, int] | tuple[int, int, int] | None = None,
    image_size: int | None = None,
    train_size: int | None = None,
    validation_size: int | None = None,
    test_size: int | None = None,
) -> dict[str, CaptionDataset]:
    one_by_one = {"train": train_size, "validation": validation_size, "test": test_size}
    one_by_one = {split: size for split, size in one_by_one.items() if size is not None}
    if one_by_one:
        if sizes is not None:
            raise ValueError(
                "Give the synthetic split sizes either as sizes or as train_size/validation_size/test_size."
            )
        sizes = one_by_one
    if variant not in SYNTHETIC_VARIANTS:
        raise ValueError(f"synthetic variant={variant!r}: expected one of {', '.join(SYNTHETIC_VARIANTS)}.")
    build, render, default_size, smallest = SYNTHETIC_VARIANTS[variant]
    image_size = default_size if image_size is None else image_size
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < smallest:
        raise ValueError(f"synthetic image_size={image_size!r}: expected a whole number of pixels >= {smallest}.")
    name = "synthetic" if variant == "easy" else f"synthetic-{variant}"
    source = f"built-in {variant} synthetic scenes (seed {seed}, {image_size}x{image_size})"
    datasets = {}
    for split, examples in build(seed, sizes).items():
        records = [
            CaptionRecord(e.image_id, functools.partial(render, e.scene, image_size), list(e.captions))
            for e in examples
        ]
        datasets[split] = CaptionDataset(records, name=name, split=split, source=source)
    return datasets


FLICKR8K_EXPECTED = (
    "Flickr8k in the Kaggle layout (captions.txt with an 'image,caption' header + Images/) or the original layout "
    "(Flickr8k.token.txt + Flicker8k_Dataset/ or Flickr8k_Dataset/, split lists Flickr_8k.{train,dev,test}Images.txt)"
)
_FLICKR8K_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "validation": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}


def _read_kaggle_captions(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None or [cell.strip().lower() for cell in header[:2]] != ["image", "caption"]:
            raise ValueError(f"{path} should start with the header 'image,caption' (Kaggle Flickr8k); got {header}.")
        for row in rows:
            if not row or not row[0].strip():
                continue
            # Captions with unquoted commas spill over into extra columns: they belong to the caption.
            captions.setdefault(row[0].strip(), []).append(",".join(row[1:]))
    return captions


def _read_flickr_token_file(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            key, tab, caption = line.partition("\t")
            name, hash_sign, _ = key.rpartition("#")
            if not hash_sign or not name:
                raise ValueError(f"{path} line {number}: expected 'image.jpg#N<TAB>caption', got {line[:80]!r}.")
            captions.setdefault(name.strip(), []).append(caption if tab else "")
    return captions


def _read_image_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def _load_flickr8k(
    data_dir,
    seed: int,
    verify_images: bool | str,
    images_dir: str | os.PathLike | None = None,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
) -> dict[str, CaptionDataset]:
    root = _directory(data_dir, "flickr8k", FLICKR8K_EXPECTED)
    text_dirs = [root, root / "Flickr8k_text"]
    kaggle = root / "captions.txt"
    token = _first_existing(folder / "Flickr8k.token.txt" for folder in text_dirs)
    if kaggle.is_file():
        annotation, captions = kaggle, _read_kaggle_captions(kaggle)
        image_folders = ("Images", "images")
    elif token is not None:
        annotation, captions = token, _read_flickr_token_file(token)
        image_folders = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Flickr8k_Dataset/Flicker8k_Dataset", "Images")
    else:
        raise FileNotFoundError(f"No captions.txt or Flickr8k.token.txt in {root}; expected {FLICKR8K_EXPECTED}.")
    folder = _images_folder(
        root, images_dir, image_folders, f"the Flickr8k images next to {annotation.name}", next(iter(captions), None)
    )

    split_files = {
        split: _first_existing(d / name for d in text_dirs) for split, name in _FLICKR8K_SPLIT_FILES.items()
    }
    found = [split for split, path in split_files.items() if path is not None]
    if found and len(found) < 3:
        missing = [_FLICKR8K_SPLIT_FILES[split] for split in SPLITS if split not in found]
        raise FileNotFoundError(
            f"{root} has some of Flickr8k's split lists but not {', '.join(missing)}; give all three or none "
            f"(then the images are split by seed)."
        )
    if found:
        names = {split: _read_image_list(path) for split, path in split_files.items()}
        how = "official split lists"
    else:
        names = deterministic_split(captions, seed, split_fractions)
        how = f"split by seed {seed}"
    source = f"{annotation} + {folder}/ ({how})"
    return {
        split: _file_split(
            ((name, folder / name, captions.get(name, [])) for name in names[split]),
            "flickr8k",
            split,
            source,
            verify_images,
        )
        for split in SPLITS
    }


KARPATHY_EXPECTED = (
    "a Karpathy split file (dataset_flickr8k.json, dataset_flickr30k.json or dataset_coco.json: "
    '{"images": [{"filename", "filepath", "split", "sentences": [{"raw"}]}]}) and an images folder'
)
_KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "validation", "test": "test"}
_KARPATHY_IMAGE_FOLDERS = (
    ".",
    "images",
    "Images",
    "Flicker8k_Dataset",
    "Flickr8k_Dataset",
    "flickr30k-images",
    "flickr30k_images",
)


def _load_karpathy(
    data_dir,
    dataset_name: str | None,
    verify_images: bool | str,
    annotation_file: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
) -> dict[str, CaptionDataset]:
    root = _directory(data_dir, "karpathy", KARPATHY_EXPECTED)
    if annotation_file is not None:
        annotation = Path(annotation_file).expanduser()
        annotation = annotation if annotation.is_absolute() else root / annotation
        if not annotation.is_file():
            raise FileNotFoundError(
                f"Karpathy annotation_file {annotation} does not exist; expected {KARPATHY_EXPECTED}."
            )
    else:
        found = sorted(root.glob("dataset_*.json"))
        if dataset_name is not None:
            wanted = root / f"dataset_{dataset_name.lower().replace('-', '')}.json"
            found = [wanted] if wanted.is_file() else []
        if not found:
            named = f"dataset_{dataset_name}.json" if dataset_name else "dataset_*.json"
            raise FileNotFoundError(f"No {named} in {root}; expected {KARPATHY_EXPECTED}.")
        if len(found) > 1:
            raise ValueError(
                f"{root} holds several Karpathy files ({', '.join(p.name for p in found)}); choose one with "
                f"dataset_name (e.g. 'flickr8k') or annotation_file."
            )
        annotation = found[0]
    try:
        images = json.loads(annotation.read_text(encoding="utf-8"))["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{annotation} is not a Karpathy split file ({error}); expected {KARPATHY_EXPECTED}."
        ) from error

    def relative(entry: dict) -> Path:
        return Path(entry.get("filepath") or "") / entry["filename"]

    if images_dir is not None:
        folder = _images_folder(root, images_dir, (), "the images of the Karpathy file")
    else:
        # The folder that holds the first listed image; COCO's filepath ("val2014") makes the root itself right.
        probe = relative(images[0]) if images else Path()
        folder = _first_existing(root / c for c in _KARPATHY_IMAGE_FOLDERS if (root / c / probe).is_file())
        if folder is None:
            raise FileNotFoundError(
                f"Cannot find {probe}, the first image of {annotation.name}, under {root} (looked in "
                f"{', '.join(_KARPATHY_IMAGE_FOLDERS)}); pass images_dir, the folder holding the images."
            )
    entries: dict[str, list[tuple[str, Path, list]]] = {split: [] for split in SPLITS}
    for number, entry in enumerate(images):
        split = _KARPATHY_SPLITS.get(entry.get("split"))
        if split is None or "filename" not in entry:
            raise ValueError(
                f"{annotation} images[{number}] has split={entry.get('split')!r} and filename="
                f"{entry.get('filename')!r}; expected a filename and a split of train, val, test or restval."
            )
        raw = [s.get("raw") or " ".join(s.get("tokens", [])) for s in entry.get("sentences", [])]
        entries[split].append((str(relative(entry)), folder / relative(entry), raw))
    source = f"{annotation} + {folder}/"
    return {split: _file_split(entries[split], "karpathy", split, source, verify_images) for split in SPLITS}


COCO_EXPECTED = (
    "COCO captions: annotations/captions_train2014.json and captions_val2014.json with train2014/ and val2014/ "
    "image folders (or the 2017 files and folders)"
)


def _read_coco(path: Path, folder: Path) -> list[tuple[str, Path, list[str]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        captions: dict[Any, list[str]] = {}
        for annotation in data["annotations"]:
            captions.setdefault(annotation["image_id"], []).append(annotation.get("caption"))
        images = [(image["id"], image["file_name"]) for image in data["images"]]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is not a COCO caption file ({type(error).__name__}: {error}); expected 'images' "
            f"[{{id, file_name}}] and 'annotations' [{{image_id, caption}}]."
        ) from error
    return [(file_name, folder / file_name, captions.get(image_id, [])) for image_id, file_name in images]


def _load_coco(
    data_dir,
    seed: int,
    verify_images: bool | str,
    year: str | int | None = None,
    images_dir: str | os.PathLike | None = None,
) -> dict[str, CaptionDataset]:
    root = _directory(data_dir, "coco", COCO_EXPECTED)
    annotations = root / "annotations"
    years = [str(year)] if year is not None else ["2014", "2017"]
    year = next((y for y in years if (annotations / f"captions_train{y}.json").is_file()), None)
    if year is None:
        tried = " or ".join(str(annotations / f"captions_train{y}.json") for y in years)
        raise FileNotFoundError(f"No {tried}; expected {COCO_EXPECTED}.")
    image_root = _images_folder(root, images_dir, (".",), "the COCO image folders") if images_dir else root

    def part(name: str) -> tuple[Path, Path]:
        annotation = annotations / f"captions_{name}{year}.json"
        folder = _first_existing([image_root / f"{name}{year}", image_root / "images" / f"{name}{year}"])
        if folder is None:
            raise FileNotFoundError(f"No {name}{year}/ image folder in {image_root}; expected {COCO_EXPECTED}.")
        return annotation, folder

    train_annotation, train_folder = part("train")
    val_annotation = annotations / f"captions_val{year}.json"
    if not val_annotation.is_file():
        raise FileNotFoundError(f"No {val_annotation}; expected {COCO_EXPECTED}.")
    val_annotation, val_folder = part("val")
    entries = {"train": _read_coco(train_annotation, train_folder)}
    val_entries = _read_coco(val_annotation, val_folder)
    test_annotation = annotations / f"captions_test{year}.json"
    if test_annotation.is_file():
        entries["validation"] = val_entries
        entries["test"] = _read_coco(test_annotation, part("test")[1])
        how = "official splits"
    else:
        # COCO's test images have no public captions: the val set is halved by seed into validation and test.
        halves = deterministic_split([e[0] for e in val_entries], seed, (0.0, 0.5, 0.5))
        test_names = set(halves["test"])
        entries["validation"] = [e for e in val_entries if e[0] not in test_names]
        entries["test"] = [e for e in val_entries if e[0] in test_names]
        how = f"val{year} halved by seed {seed} into validation and test"
    source = f"{annotations} + {image_root}/ ({how})"
    return {split: _file_split(entries[split], "coco", split, source, verify_images) for split in SPLITS}


# ---------------------------------------------------------------------------------------------------------------
# 🤗 datasets
# ---------------------------------------------------------------------------------------------------------------

_HF_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "val", "valid", "dev"), "test": ("test",)}


def _hub_is_offline() -> bool:
    import datasets
    from huggingface_hub import constants

    # Both libraries read HF_HUB_OFFLINE once, at import; either saying so means no Hub.
    return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False) or constants.HF_HUB_OFFLINE)


class HFImage:
    """A picklable reference to one image of a 🤗 dataset whose image column was cast to `Image(decode=False)`:
    calling it opens the image (from its bytes or its file) and decodes it."""

    def __init__(self, dataset, column: str, row: int):
        self.dataset, self.column, self.row = dataset, column, row

    def __call__(self) -> PIL.Image.Image:
        value = self.dataset[self.row][self.column]
        return _open_hf_image(value)


def _open_hf_image(value: Any) -> PIL.Image.Image:
    if isinstance(value, dict) and value.get("bytes") is not None:
        image = PIL.Image.open(io.BytesIO(value["bytes"]))
    elif isinstance(value, dict) and value.get("path"):
        image = PIL.Image.open(value["path"])
    elif isinstance(value, str | os.PathLike):
        image = PIL.Image.open(value)
    else:
        raise ValueError(f"expected image bytes or a path, got {type(value).__name__}")
    image.load()  # decode now, inside the caller's error handling, not later inside the image processor
    return image


def _check_hf_image(value: Any, decode: bool) -> str | None:
    """'missing_image', 'unreadable_image' or None for one value of a `decode=False` image column."""
    if value is None:
        return "missing_image"
    if isinstance(value, dict) and value.get("bytes") is not None:
        return None if check_image_file(io.BytesIO(value["bytes"]), decode) is None else "unreadable_image"
    path = value.get("path") if isinstance(value, dict) else value
    if not path or not Path(path).is_file():
        return "missing_image"
    return None if check_image_file(path, decode) is None else "unreadable_image"


def _load_hf_source(data_dir, dataset_name, config_name, revision, cache_dir):
    import datasets

    source = data_dir if data_dir is not None else dataset_name
    if source is None:
        raise ValueError("The hf format needs data_dir (a local dataset folder) or dataset_name (a Hub id or folder).")
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return datasets.load_from_disk(str(path)), str(path)
        return datasets.load_dataset(str(path), config_name, cache_dir=cache_dir), str(path)
    if data_dir is not None:
        raise FileNotFoundError(
            f"hf data_dir {path} does not exist or is not a folder; expected a datasets.save_to_disk folder or a "
            f"folder load_dataset reads (e.g. an imagefolder with metadata.jsonl or metadata.csv)."
        )
    try:
        return datasets.load_dataset(source, config_name, revision=revision, cache_dir=cache_dir), source
    except Exception as error:
        if _hub_is_offline():
            raise ConnectionError(
                f"Cannot load the 🤗 dataset {source!r}: HF_HUB_OFFLINE is set, so the Hub cannot be reached and "
                f"it is not in the local cache ({type(error).__name__}). Download it while online, or pass a local "
                f"folder as data_dir."
            ) from error
        raise


def _hf_splits(loaded, source: str) -> dict[str, Any]:
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    found: dict[str, Any] = {}
    for split, aliases in _HF_SPLIT_NAMES.items():
        name = next((alias for alias in aliases if alias in loaded), None)
        if name is not None:
            found[split] = loaded[name]
    if "train" not in found:
        if len(loaded) == 1:  # a lone split of any name ("default", "all", ...) is the whole dataset
            found["train"] = next(iter(loaded.values()))
        else:
            raise ValueError(
                f"The 🤗 dataset {source} has splits {sorted(loaded)} but no train split; expected train and "
                f"optionally validation (or val, valid, dev) and test."
            )
    return found


def _is_text_feature(feature: Any) -> bool:
    import datasets

    if isinstance(feature, list) and len(feature) == 1:  # the [Value("string")] shorthand for a list feature
        feature = feature[0]
    elif not isinstance(feature, datasets.Value) and hasattr(feature, "feature"):  # List, Sequence, LargeList
        feature = feature.feature
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _caption_values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _load_hf(
    data_dir,
    dataset_name: str | None,
    image_column: str,
    caption_column: str | Sequence[str],
    seed: int,
    verify_images: bool | str,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    config_name: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, CaptionDataset]:
    import datasets

    verify, decode = _verify_mode(verify_images)
    fractions = _check_fractions(split_fractions)
    loaded, source = _load_hf_source(data_dir, dataset_name, config_name, revision, cache_dir)
    parts = _hf_splits(loaded, source)
    caption_columns = [caption_column] if isinstance(caption_column, str) else list(caption_column)

    # Relative paths in a local dataset's string column are relative to its folder.
    base = Path(source) if Path(source).is_dir() else None
    scanned = {}  # their split -> one (image_id, image, problem, raw captions) per row
    for split, part in parts.items():
        features = part.features
        for column in (image_column, *caption_columns):
            if column not in features:
                raise ValueError(
                    f"The 🤗 dataset {source} ({split}) has no column {column!r}; its columns are "
                    f"{list(features)}. Set image_column / caption_column."
                )
        for column in caption_columns:
            if not _is_text_feature(features[column]):
                raise ValueError(
                    f"Column {column!r} of the 🤗 dataset {source} is {features[column]}; expected captions: a string "
                    f"or a list of strings per row."
                )
        feature = features[image_column]
        if isinstance(feature, datasets.Image):
            # Decode ourselves: a damaged image is then skipped and counted instead of failing inside datasets.
            part = part.cast_column(image_column, datasets.Image(decode=False))
        elif not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
            raise ValueError(
                f"Column {image_column!r} of the 🤗 dataset {source} is {feature}; expected an Image feature or "
                f"file paths (strings)."
            )
        scanned[split] = _scan_hf_part(part, split, image_column, caption_columns, base, verify, decode)

    rows = {split: [(split, row) for row in range(len(entries))] for split, entries in scanned.items()}
    missing = [split for split in ("validation", "test") if split not in rows]
    how = "its own splits"
    if missing:
        # Carve what is missing out of train, deterministically by seed.
        shares = {split: fractions[SPLITS.index(split)] for split in missing}
        carved = deterministic_split(
            range(len(rows["train"])),
            seed,
            (1.0 - sum(shares.values()), shares.get("validation", 0.0), shares.get("test", 0.0)),
        )
        everything = rows["train"]
        for split in ("train", *missing):
            rows[split] = [everything[i] for i in sorted(carved[split])]
        how = f"{' and '.join(missing)} split off train by seed {seed}"

    result = {}
    for split in SPLITS:
        skipped = SkipCounts()
        records = []
        seen: set[str] = set()
        for part_split, row in rows[split]:
            image_id, image, problem, raw = scanned[part_split][row]
            if image_id in seen:  # ids key the references in evaluation, so they must be unique
                image_id = f"{image_id}#{part_split}-{row}"
            seen.add(image_id)
            captions = _usable_captions(raw, skipped, image_id)
            if not captions:
                skipped.add("image_without_captions", image_id)
            elif problem is not None:
                skipped.add(problem, image_id)
            else:
                records.append(CaptionRecord(image_id, image, captions))
        result[split] = _finish_split(records, "hf", split, f"{source} ({how})", skipped)
    return result


def _scan_hf_part(
    part, split: str, image_column: str, caption_columns: list[str], base: Path | None, verify: bool, decode: bool
) -> list[tuple[str, Any, str | None, list[Any]]]:
    images = part.select_columns([image_column])
    entries = []
    row = 0
    # Batches keep memory flat for datasets with embedded image bytes; the bytes are checked, not kept.
    for batch in part.select_columns([image_column, *caption_columns]).iter(batch_size=256):
        for i, value in enumerate(batch[image_column]):
            if isinstance(value, str) and base is not None and not Path(value).is_absolute():
                value = str(base / value)
            path = value.get("path") if isinstance(value, dict) else value
            image_id = Path(path).name if path else f"{split}-{row}"
            raw = [c for column in caption_columns for c in _caption_values(batch[column][i])]
            problem = _check_hf_image(value, decode) if verify else None
            image = value if isinstance(value, str) else HFImage(images, image_column, row)
            entries.append((image_id, image, problem, raw))
            row += 1
    return entries


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------


def load_caption_splits(
    dataset_format: str,
    data_dir: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    image_column: str = "image",
    caption_column: str | Sequence[str] = "caption",
    seed: int = 0,
    verify_images: bool | str = True,
    **format_options,
) -> dict[str, CaptionDataset]:
    """
    Loads a caption dataset as train, validation and test `CaptionDataset`s (one item per image, all its captions).

    Bad data is skipped and counted by reason in each split's `skipped` (`SkipCounts`, logged as one line per
    split): annotated images whose file is missing, files PIL cannot open or verify, empty captions and images left
    without captions.

    Args:
        dataset_format (`str`):
            - `"synthetic"`: the built-in rendered scenes, drawn in memory. Options: `variant` (`"easy"`: shape
              scenes, `captioning.synthetic`; `"hard"`: scenes of drawn objects, `captioning.synthetic_hard`);
              `sizes` (`{"train": 3000, "validation": 250, "test": 250}` or a 3-tuple) or any of `train_size`,
              `validation_size`, `test_size`; `image_size` (64 easy, 160 hard).
            - `"flickr8k"`: `data_dir` in the Kaggle layout (`captions.txt` + `Images/`) or the original one
              (`Flickr8k.token.txt` + `Flicker8k_Dataset/`, maybe under `Flickr8k_text/`). The official split lists
              `Flickr_8k.{train,dev,test}Images.txt` are used when present, else the images are split by seed.
              Options: `images_dir`, `split_fractions` (default 0.75/0.125/0.125).
            - `"karpathy"`: `data_dir` holding `dataset_{flickr8k,flickr30k,coco}.json` (pick one with
              `dataset_name` if there are several) and the images; `restval` counts as train. Options:
              `annotation_file`, `images_dir` (default: the folder of `data_dir` that holds the listed files).
            - `"coco"`: `data_dir` with `annotations/captions_{train,val}2014.json` and `train2014/`, `val2014/`
              (or 2017). Without a test annotation file the val set is halved by seed into validation and test.
              Options: `year`, `images_dir` (the folder holding `train2014/` and `val2014/`).
            - `"hf"`: a 🤗 `datasets` dataset: `data_dir` (or `dataset_name`) a local folder (`save_to_disk` output,
              or a folder `load_dataset` reads such as an imagefolder with `metadata.jsonl`/`metadata.csv`), or
              `dataset_name` a Hub id. Splits named train, validation/val/valid/dev and test are used; missing
              validation/test splits are carved out of train by seed. Options: `split_fractions`, `config_name`,
              `revision`, `cache_dir`.
        data_dir (`str` or `os.PathLike`, *optional*): the dataset's folder (not used by `synthetic`).
        dataset_name (`str`, *optional*): a Hub id (`hf`) or which Karpathy file (`karpathy`: "flickr8k", ...).
        image_column (`str`, *optional*, defaults to `"image"`): `hf` only: the image column (an `Image` feature or
            file paths).
        caption_column (`str` or `list[str]`, *optional*, defaults to `"caption"`): `hf` only: the caption column
            (a string or a list of strings per row), or several columns whose captions are pooled.
        seed (`int`, *optional*, defaults to 0): seeds the synthetic scenes and every split made here.
        verify_images (`bool` or `"decode"`, *optional*, defaults to `True`): check every image file once when the
            split is built with PIL's cheap `verify()`; `"decode"` decodes every image (slower; also catches
            truncated JPEGs); `False` checks only that files exist. A file that still fails to decode later gives a
            `None` item (see `CaptionDataset`).
        format_options: the format's options listed above.

    Returns:
        `dict[str, CaptionDataset]`: keys "train", "validation" and "test".

    Raises:
        `FileNotFoundError`: `data_dir`, an annotation file or the image folder does not exist (the message names
            the path and what the format expects).
        `ValueError`: a split has no usable image (the message names format, folder, split and skip counts), or a
            file is not in the expected layout.
        `ConnectionError`: a Hub dataset cannot be loaded because `HF_HUB_OFFLINE` is set and it is not cached.
        `TypeError`: an option the format does not take.
    """
    options = dict(format_options)

    def take(*names: str) -> dict[str, Any]:
        taken = {name: options.pop(name) for name in names if name in options}
        _reject_options(dataset_format, options, names)
        return taken

    if dataset_format == "synthetic":
        return _load_synthetic(
            seed, **take("variant", "sizes", "image_size", "train_size", "validation_size", "test_size")
        )
    if dataset_format == "flickr8k":
        return _load_flickr8k(data_dir, seed, verify_images, **take("images_dir", "split_fractions"))
    if dataset_format == "karpathy":
        return _load_karpathy(data_dir, dataset_name, verify_images, **take("annotation_file", "images_dir"))
    if dataset_format == "coco":
        return _load_coco(data_dir, seed, verify_images, **take("year", "images_dir"))
    if dataset_format == "hf":
        return _load_hf(
            data_dir,
            dataset_name,
            image_column,
            caption_column,
            seed,
            verify_images,
            **take("split_fractions", "config_name", "revision", "cache_dir"),
        )
    raise ValueError(f"Unknown dataset_format {dataset_format!r}; expected one of {', '.join(FORMATS)}.")


def add_data_arguments(parser) -> None:
    """The dataset flags train.py and the evaluation command share (an argparse parser or group), those of the
    streamed web formats included (`captioning.web_data`)."""
    from captioning.web_data import STREAM_FORMATS, add_web_data_arguments

    parser.add_argument("--dataset_format", default="synthetic", choices=(*FORMATS, *STREAM_FORMATS))
    parser.add_argument("--data_dir", default=None, help="Folder of the dataset (layout depends on --dataset_format).")
    parser.add_argument("--dataset_name", default=None, help="A 🤗 datasets hub id or local folder (format hf).")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--caption_column", default="caption")
    parser.add_argument("--synthetic_sizes", default=None, help="Synthetic split sizes TRAIN,VALIDATION,TEST.")
    parser.add_argument(
        "--synthetic_variant",
        default="easy",
        choices=tuple(SYNTHETIC_VARIANTS),
        help="easy: 1–3 shapes of one kind (the tests and demo); hard: 2–5 objects of ten kinds with counts, "
        "relations, backgrounds, noise/blur/JPEG and five annotator styles.",
    )
    add_web_data_arguments(parser)


def check_data_arguments(args) -> None:
    """Reject flag combinations that cannot load, before anything is built; raises SystemExit with a sentence."""
    from captioning.web_data import check_web_data_arguments

    check_web_data_arguments(args)
    if args.dataset_format in ("flickr8k", "karpathy", "coco") and not args.data_dir:
        raise SystemExit(f"--dataset_format {args.dataset_format} needs --data_dir.")
    if args.dataset_format == "hf" and not (args.dataset_name or args.data_dir):
        raise SystemExit("--dataset_format hf needs --dataset_name (a hub id or local folder) or --data_dir.")
    if args.synthetic_variant != "easy" and args.dataset_format != "synthetic":
        raise SystemExit(
            f"--synthetic_variant {args.synthetic_variant} chooses the built-in synthetic set; it does nothing with "
            f"--dataset_format {args.dataset_format}. Drop it, or use --dataset_format synthetic."
        )
    if args.synthetic_sizes is not None:
        sizes = args.synthetic_sizes.split(",")
        if len(sizes) != 3 or not all(n.strip().isdigit() and int(n) > 0 for n in sizes):
            raise SystemExit(
                f"--synthetic_sizes must be three positive integers TRAIN,VALIDATION,TEST; got {args.synthetic_sizes!r}."
            )


def load_splits_from_args(args, **stream_options) -> dict[str, CaptionDataset]:
    """`load_caption_splits` with the flags of `add_data_arguments` (and `args.seed`). For the streamed formats
    (urls, webdataset), `captioning.web_data.load_web_splits(args, **stream_options)`: "train" is then a
    `CaptionStream`."""
    from captioning.web_data import STREAM_FORMATS, load_web_splits

    if args.dataset_format in STREAM_FORMATS:
        return load_web_splits(args, **stream_options)
    options = {}
    if args.dataset_format == "synthetic":
        options["variant"] = args.synthetic_variant
        if args.synthetic_sizes:
            options["sizes"] = tuple(int(n) for n in args.synthetic_sizes.split(","))
    return load_caption_splits(
        args.dataset_format,
        data_dir=args.data_dir,
        dataset_name=args.dataset_name,
        image_column=args.image_column,
        caption_column=args.caption_column,
        seed=args.seed,
        **options,
    )


__all__ = [
    "FORMATS",
    "SPLITS",
    "CaptionDataset",
    "CaptionPairs",
    "CaptionRecord",
    "SkipCounts",
    "check_image_file",
    "deterministic_split",
    "add_data_arguments",
    "check_data_arguments",
    "load_caption_splits",
    "load_splits_from_args",
]
