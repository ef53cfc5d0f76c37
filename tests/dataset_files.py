"""Dataset folders on disk for the tests: Flickr8k in both layouts, COCO, and the broken files real datasets hold
(missing, corrupt, truncated images; empty captions)."""

import io
import json
import random

import numpy as np
from PIL import Image


def write_image(path, seed: int = 0, size: tuple[int, int] = (16, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_corrupt(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(str(path.name)).randbytes(300))
    return path


def write_truncated_png(path):
    """A PNG cut in half: PIL's verify() checks PNG chunks, so this is caught when the split is built."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def write_truncated_jpeg(path):
    """A JPEG missing its last third: verify() reads only headers and passes it; decoding fails."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: 2 * len(data) // 3])
    return path


def good_names(count: int) -> list[str]:
    return [f"{1000 + i}_good.jpg" for i in range(count)]


def make_kaggle_flickr8k(root, good: int = 20):
    """captions.txt + Images/: `good` usable images and one of each kind of bad entry."""
    images = root / "Images"
    rows = ["image,caption"]
    for i, name in enumerate(good_names(good)):
        write_image(images / name, seed=i)
        rows += [f"{name},A dog number {i} runs .", f'{name},"A dog, number {i}, plays ."']
    rows.append(f"{good_names(good)[0]},   ")  # an empty caption of a good image
    rows += ["missing.jpg,A cat sleeps .", "corrupt.jpg,A bird sings .", "truncated.png,A fish swims ."]
    write_corrupt(images / "corrupt.jpg")
    write_truncated_png(images / "truncated.png")
    write_image(images / "silent.jpg", seed=99)
    rows += ["silent.jpg,", "silent.jpg, "]  # an image whose captions are all empty
    (root / "captions.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def make_original_flickr8k(root):
    """Flickr8k.token.txt + Flicker8k_Dataset/ + the three official split lists."""
    images = root / "Flicker8k_Dataset"
    names = good_names(8)
    for i, name in enumerate(names):
        write_image(images / name, seed=i)
    write_truncated_jpeg(images / "late.jpg")
    write_corrupt(images / "corrupt.jpg")
    lines = []
    for name in [*names, "late.jpg", "corrupt.jpg", "missing.jpg"]:
        lines += [f"{name}#{k}\tA child plays in the park number {k} ." for k in range(5)]
    lines.append(f"{names[0]}#5\t ")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    splits = {
        "trainImages": [*names[:5], "late.jpg"],
        "devImages": [names[5], "missing.jpg"],
        "testImages": [*names[6:], "corrupt.jpg"],
    }
    for part, listed in splits.items():
        (root / f"Flickr_8k.{part}.txt").write_text("\n".join(listed) + "\n", encoding="utf-8")
    return root


def make_coco(root, year: str = "2014"):
    def write(split: str, count: int, bad: bool):
        images, annotations = [], []
        for i in range(count):
            name = f"COCO_{split}{year}_{i:012d}.jpg"
            write_image(root / f"{split}{year}" / name, seed=i)
            images.append({"id": 100 + i, "file_name": name})
            annotations += [
                {"id": 1000 * i + k, "image_id": 100 + i, "caption": f"A thing {i} {k} ."} for k in range(5)
            ]
        if bad:
            write_corrupt(root / f"{split}{year}" / "corrupt.jpg")
            images += [{"id": 900, "file_name": "corrupt.jpg"}, {"id": 901, "file_name": "uncaptioned.jpg"}]
            annotations.append({"id": 9000, "image_id": 900, "caption": "Broken ."})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        data = {"images": images, "annotations": annotations}
        (root / "annotations" / f"captions_{split}{year}.json").write_text(json.dumps(data), encoding="utf-8")

    write("train", 5, bad=True)
    write("val", 6, bad=False)
    return root
