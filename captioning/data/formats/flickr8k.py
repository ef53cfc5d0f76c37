"""Flickr8k in the Kaggle layout (`captions.txt` + `Images/`) or the original one (`Flickr8k.token.txt` +
`Flicker8k_Dataset/`, maybe under `Flickr8k_text/`). The official split lists are used when present, else the images
are split by seed."""

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from captioning.data.records import SPLITS, CaptionDataset
from captioning.data.splits import (
    DEFAULT_SPLIT_FRACTIONS,
    DataSource,
    data_directory,
    deterministic_split,
    file_split,
    first_existing,
    images_folder,
)

OPTIONS = ("images_dir", "split_fractions")
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


def load(
    source: DataSource,
    images_dir: str | os.PathLike | None = None,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
) -> dict[str, CaptionDataset]:
    data_dir, seed, verify_images = source.data_dir, source.seed, source.verify_images
    root = data_directory(data_dir, "flickr8k", FLICKR8K_EXPECTED)
    text_dirs = [root, root / "Flickr8k_text"]
    kaggle = root / "captions.txt"
    token = first_existing(folder / "Flickr8k.token.txt" for folder in text_dirs)
    if kaggle.is_file():
        annotation, captions = kaggle, _read_kaggle_captions(kaggle)
        image_folders = ("Images", "images")
    elif token is not None:
        annotation, captions = token, _read_flickr_token_file(token)
        image_folders = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Flickr8k_Dataset/Flicker8k_Dataset", "Images")
    else:
        raise FileNotFoundError(f"No captions.txt or Flickr8k.token.txt in {root}; expected {FLICKR8K_EXPECTED}.")
    folder = images_folder(
        root, images_dir, image_folders, f"the Flickr8k images next to {annotation.name}", next(iter(captions), None)
    )

    split_files = {split: first_existing(d / name for d in text_dirs) for split, name in _FLICKR8K_SPLIT_FILES.items()}
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
        split: file_split(
            ((name, folder / name, captions.get(name, [])) for name in names[split]),
            "flickr8k",
            split,
            source,
            verify_images,
        )
        for split in SPLITS
    }
