"""Karpathy's split files (`dataset_{flickr8k,flickr30k,coco}.json`) and their images; `restval` counts as train."""

import json
import os
from pathlib import Path

from captioning.data.records import SPLITS, CaptionDataset
from captioning.data.splits import DataSource, data_directory, file_split, first_existing, images_folder

OPTIONS = ("annotation_file", "images_dir")

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


def load(
    source: DataSource,
    annotation_file: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
) -> dict[str, CaptionDataset]:
    data_dir, dataset_name, verify_images = source.data_dir, source.dataset_name, source.verify_images
    root = data_directory(data_dir, "karpathy", KARPATHY_EXPECTED)
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
        folder = images_folder(root, images_dir, (), "the images of the Karpathy file")
    else:
        # The folder that holds the first listed image; COCO's filepath ("val2014") makes the root itself right.
        probe = relative(images[0]) if images else Path()
        folder = first_existing(root / c for c in _KARPATHY_IMAGE_FOLDERS if (root / c / probe).is_file())
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
    return {split: file_split(entries[split], "karpathy", split, source, verify_images) for split in SPLITS}
