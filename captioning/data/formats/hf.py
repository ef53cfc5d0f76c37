"""Any 🤗 `datasets` dataset: a local folder (`save_to_disk` output, or a folder `load_dataset` reads such as an
imagefolder with `metadata.jsonl`/`metadata.csv`) or a Hub id. Missing validation/test splits are carved out of
train by seed."""

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import PIL.Image

from captioning.data.records import SPLITS, CaptionDataset, CaptionRecord, SkipCounts
from captioning.data.splits import (
    DEFAULT_SPLIT_FRACTIONS,
    DataSource,
    check_fractions,
    check_image_file,
    deterministic_split,
    finish_split,
    usable_captions,
    verify_mode,
)

logger = logging.getLogger(__name__)

OPTIONS = ("split_fractions", "config_name", "revision", "cache_dir")


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

    def describe(self) -> str:
        """Who this image is, stable across runs (for `CaptionDataset.fingerprint`)."""
        return f"hf:{getattr(self.dataset, '_fingerprint', None)}:{self.row}"


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


def load(
    source: DataSource,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    config_name: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, CaptionDataset]:
    import datasets

    data_dir, dataset_name, seed, verify_images = (
        source.data_dir,
        source.dataset_name,
        source.seed,
        source.verify_images,
    )
    image_column, caption_column = source.image_column, source.caption_column

    verify, decode = verify_mode(verify_images)
    fractions = check_fractions(split_fractions)
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
            captions = usable_captions(raw, skipped, image_id)
            if not captions:
                skipped.add("image_without_captions", image_id)
            elif problem is not None:
                skipped.add(problem, image_id)
            else:
                records.append(CaptionRecord(image_id, image, captions))
        result[split] = finish_split(records, "hf", split, f"{source} ({how})", skipped)
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
