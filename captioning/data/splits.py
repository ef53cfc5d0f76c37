"""Building train/validation/test splits from annotated image files: checking images and captions, counting what is
skipped, cutting by seed, and the folder lookups the file formats share."""

import logging
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from captioning.data.records import CaptionDataset, CaptionRecord, SkipCounts

logger = logging.getLogger(__name__)

# Where no official split exists: train / validation / test shares, Flickr8k's 6000/1000/1000 rounded.
DEFAULT_SPLIT_FRACTIONS = (0.75, 0.125, 0.125)


@dataclass(frozen=True)
class DataSource:
    """What every format is told: where the data is and how to read it (the format's own options come apart)."""

    data_dir: str | os.PathLike | None = None
    dataset_name: str | None = None
    image_column: str = "image"
    caption_column: str | Sequence[str] = "caption"
    seed: int = 0
    verify_images: bool | str = True


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


def verify_mode(verify_images: bool | str) -> tuple[bool, bool]:
    if verify_images in (True, False):
        return bool(verify_images), False
    if verify_images == "decode":
        return True, True
    raise ValueError(f"verify_images={verify_images!r}: expected True, False or 'decode'.")


def usable_captions(raw: Iterable[Any], skipped: SkipCounts, image_id: str) -> list[str]:
    captions = []
    for caption in raw:
        text = caption.strip() if isinstance(caption, str) else ""
        if text:
            captions.append(text)
        else:
            skipped.add("empty_caption", image_id)
    return captions


def file_split(
    entries: Iterable[tuple[str, Path, Sequence[Any]]],
    name: str,
    split: str,
    source: str,
    verify_images: bool | str,
) -> CaptionDataset:
    """Keeps the entries (image id, file, raw captions) whose captions and image file are usable, counting the
    others."""
    verify, decode = verify_mode(verify_images)
    skipped = SkipCounts()
    records = []
    for image_id, path, raw_captions in entries:
        captions = usable_captions(raw_captions, skipped, image_id)
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
    return finish_split(records, name, split, source, skipped)


def finish_split(
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
    fractions = check_fractions(fractions)
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


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not 0.999 <= sum(fractions) <= 1.001:
        raise ValueError(
            f"split_fractions={tuple(fractions)!r}: expected three non-negative (train, validation, test) shares "
            f"summing to 1."
        )
    return tuple(float(f) for f in fractions)


def data_directory(data_dir: str | os.PathLike | None, dataset_format: str, expected: str) -> Path:
    if data_dir is None:
        raise ValueError(f"The {dataset_format} format needs data_dir: a folder with {expected}.")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"{dataset_format} data_dir {root} does not exist or is not a folder; expected {expected}."
        )
    return root


def first_existing(candidates: Iterable[Path]) -> Path | None:
    return next((path for path in candidates if path.exists()), None)


def images_folder(
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


def reject_options(dataset_format: str, options: dict[str, Any], known: Sequence[str]) -> None:
    if options:
        raise TypeError(
            f"Unknown option(s) {sorted(options)} for the {dataset_format} format; it takes "
            f"{', '.join(known) if known else 'no extra options'}."
        )
