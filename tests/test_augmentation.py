"""Training-image augmentation: ramped strength schedules, crop / colour / flip ranges, flips that swap left and right
in the caption, and a collator whose augmentation depends on (seed, epoch, index) only."""

import math
import random

import numpy as np
import PIL.Image
import pytest
import torch

from captioning.data import load_caption_splits
from captioning.training.augmentation import AugmentationSchedule, ImageAugmentation, augmentation_rng, swap_sides
from captioning.training.collator import CaptionCollator
from modeling_captioner import CaptionerConfig, CaptionerProcessor, build_image_processor


def test_flipped_captions_swap_sides():
    assert swap_sides("A dog on the left, a cat on the Right.") == "A dog on the right, a cat on the Left."
    assert swap_sides("LEFT-hand lane; the leftmost car") == "RIGHT-hand lane; the rightmost car"
    assert swap_sides("leftover food, bright light, copyright") == "leftover food, bright light, copyright"


def test_schedules_ramp_up():
    exponential = AugmentationSchedule("exponential", max_strength=0.8, ramp_epochs=10)
    values = [exponential.strength(epoch) for epoch in range(20)]
    assert values[0] == 0.0 and values == sorted(values) and values[-1] < 0.8
    assert exponential.strength(10) == pytest.approx(0.8 * (1 - math.exp(-3)))  # 95% of the way at ramp_epochs
    linear = AugmentationSchedule("linear", max_strength=0.5, ramp_epochs=4)
    assert [linear.strength(e) for e in (0, 2, 4, 9)] == [0.0, 0.25, 0.5, 0.5]
    assert AugmentationSchedule("constant", max_strength=0.3).strength(0) == 0.3
    for bad, match in (
        ({"kind": "cosine"}, "Unknown augmentation schedule 'cosine'"),
        ({"max_strength": 1.5}, "within \\[0, 1\\]"),
        ({"ramp_epochs": 0}, "positive number of epochs"),
    ):
        with pytest.raises(ValueError, match=match):
            AugmentationSchedule(**bad)
    with pytest.raises(ValueError, match="Unknown flip mode 'always'"):
        ImageAugmentation(flip="always")
    with pytest.raises(ValueError, match=r"brightness=1\.2"):
        ImageAugmentation(brightness=1.2)


def halves(width: int = 80, height: int = 40) -> PIL.Image.Image:
    """Red left half, blue right half."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2, 0] = 255
    pixels[:, width // 2 :, 2] = 255
    return PIL.Image.fromarray(pixels)


def test_strength_scales_every_range():
    augment = ImageAugmentation()
    image = halves()
    same, caption = augment(image, "a red square on the left", 0.0, random.Random(0))
    assert same is image and caption == "a red square on the left"

    areas = []
    for seed in range(200):
        out, caption = augment(image, "a red square on the left", 1.0, random.Random(seed))
        areas.append(out.size[0] * out.size[1] / (80 * 40))
        assert caption == "a red square on the left"  # flips are off by default
    assert min(areas) >= 0.6 * 0.9 and max(areas) <= 1.0 and np.std(areas) > 0.05
    half = [ImageAugmentation(hue=0, flip="off")(image, "", 0.25, random.Random(s))[0] for s in range(100)]
    assert min(i.size[0] * i.size[1] / 3200 for i in half) >= 0.9 * 0.9  # a quarter of the strength: 10% crops
    # Same stream, same result: augmentation is a function of its random stream.
    a = augment(image, "x", 0.7, augmentation_rng(3, 2, 17))[0]
    b = augment(image, "x", 0.7, augmentation_rng(3, 2, 17))[0]
    c = augment(image, "x", 0.7, augmentation_rng(3, 3, 17))[0]
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))


def test_flips_mirror_the_image_and_swap_the_caption():
    augment = ImageAugmentation(
        crop_scale=1.0, crop_ratio=1.0, brightness=0, contrast=0, saturation=0, hue=0, flip="swap"
    )
    flips = 0
    for seed in range(100):
        out, caption = augment(halves(), "a red square on the left", 1.0, random.Random(seed))
        left_red = np.asarray(out)[:, :40, 0].mean() > 200
        assert caption == ("a red square on the left" if left_red else "a red square on the right")
        flips += not left_red
        # Several captions of one image (captions_per_image) flip together, with the same random draws.
        _, captions = augment(halves(), ["on the left", "left of a right one"], 1.0, random.Random(seed))
        assert captions == (
            ["on the left", "left of a right one"] if left_red else ["on the right", "right of a left one"]
        )
    assert 30 < flips < 70  # half the images at full strength


@pytest.fixture
def processor(tokenizer):
    config = CaptionerConfig.from_preset("tiny", tokenizer=tokenizer)
    return CaptionerProcessor(build_image_processor(config), tokenizer)


def test_collator_augments_per_epoch_and_image(processor, tokenizer):
    items = list(load_caption_splits("synthetic", sizes=(32, 4, 4))["train"])
    plain = CaptionCollator(processor)(items)
    augmented = CaptionCollator(
        processor,
        augmentation=ImageAugmentation(flip="swap"),
        augmentation_schedule=AugmentationSchedule("linear", 1.0, 2),
    )
    # Epoch 0 of a ramp: strength 0, exactly the un-augmented batch.
    assert augmented.augmentation_strength() == 0.0
    assert torch.equal(augmented(items)["pixel_values"], plain["pixel_values"])
    augmented.set_epoch(2)
    first = augmented(items)
    assert not torch.equal(first["pixel_values"], plain["pixel_values"])
    # Batch composition does not change an image's augmentation: the same image alone gives the same pixels.
    alone = augmented(items[3:4])
    assert torch.equal(alone["pixel_values"][0], first["pixel_values"][3])
    # Labels follow flipped captions: every caption is its reference or the reference with sides swapped.
    swapped = 0
    for caption, item, index in zip(first["captions"], items, first["indices"], strict=True):
        reference = augmented.pick_caption(item["captions"], index, 2)
        assert caption in (reference, swap_sides(reference))
        swapped += caption != reference
    assert swapped > 0
    decoded = processor.batch_decode(torch.where(first["labels"] < 0, 0, first["labels"]), skip_special_tokens=True)
    assert decoded == [
        tokenizer.decode(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in first["captions"]
    ]
