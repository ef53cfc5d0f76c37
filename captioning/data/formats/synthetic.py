"""The built-in synthetic scenes, drawn in memory: `variant` "easy" (1–3 shapes of one kind in one region; the
tests and the demo) or "hard" (2–5 objects of ten kinds with relations, backgrounds, degradations and five annotator
styles)."""

import functools

from captioning.data.records import CaptionDataset, CaptionRecord
from captioning.data.splits import DataSource
from captioning.data.synthetic import DEFAULT_SYNTHETIC_IMAGE_SIZE, build_synthetic_splits, render_scene
from captioning.data.synthetic_hard import DEFAULT_HARD_IMAGE_SIZE, build_hard_synthetic_splits, render_hard_scene

OPTIONS = ("variant", "sizes", "image_size", "train_size", "validation_size", "test_size")
# Variant → (split builder, renderer, default image size, smallest image size).
SYNTHETIC_VARIANTS = {
    "easy": (build_synthetic_splits, render_scene, DEFAULT_SYNTHETIC_IMAGE_SIZE, 8),
    "hard": (build_hard_synthetic_splits, render_hard_scene, DEFAULT_HARD_IMAGE_SIZE, 16),
}


def load(
    source: DataSource,
    variant: str = "easy",
    sizes: dict[str, int] | tuple[int, int, int] | None = None,
    image_size: int | None = None,
    train_size: int | None = None,
    validation_size: int | None = None,
    test_size: int | None = None,
) -> dict[str, CaptionDataset]:
    seed = source.seed
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
