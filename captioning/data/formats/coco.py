"""COCO captions: `annotations/captions_{train,val}2014.json` (or 2017) with `train2014/`, `val2014/`. Without a test
annotation file the val set is halved by seed into validation and test."""

import json
import os
from pathlib import Path
from typing import Any

from captioning.data.records import SPLITS, CaptionDataset
from captioning.data.splits import (
    DataSource,
    data_directory,
    deterministic_split,
    file_split,
    first_existing,
    images_folder,
)

OPTIONS = ("year", "images_dir")

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


def load(
    source: DataSource,
    year: str | int | None = None,
    images_dir: str | os.PathLike | None = None,
) -> dict[str, CaptionDataset]:
    data_dir, seed, verify_images = source.data_dir, source.seed, source.verify_images
    root = data_directory(data_dir, "coco", COCO_EXPECTED)
    annotations = root / "annotations"
    years = [str(year)] if year is not None else ["2014", "2017"]
    year = next((y for y in years if (annotations / f"captions_train{y}.json").is_file()), None)
    if year is None:
        tried = " or ".join(str(annotations / f"captions_train{y}.json") for y in years)
        raise FileNotFoundError(f"No {tried}; expected {COCO_EXPECTED}.")
    image_root = images_folder(root, images_dir, (".",), "the COCO image folders") if images_dir else root

    def part(name: str) -> tuple[Path, Path]:
        annotation = annotations / f"captions_{name}{year}.json"
        folder = first_existing([image_root / f"{name}{year}", image_root / "images" / f"{name}{year}"])
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
    return {split: file_split(entries[split], "coco", split, source, verify_images) for split in SPLITS}
