"""Training-image augmentation without torchvision (PIL + numpy): random resized crop, colour jitter and optional
caption-aware horizontal flips, at a strength that ramps up over training on a schedule."""

import math
import random
import re
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageEnhance

SCHEDULE_KINDS = ("exponential", "linear", "constant")
FLIP_MODES = ("off", "swap")

# A mirrored picture puts "the dog on the left" on the right: flipped images get these words swapped in their caption.
_SIDE_WORDS = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_SIDE_PATTERN = re.compile(r"\b(" + "|".join(_SIDE_WORDS) + r")\b", re.IGNORECASE)


def swap_sides(caption: str) -> str:
    """The caption of the mirrored image: left ↔ right (also leftmost ↔ rightmost, "left-hand"), case kept."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = _SIDE_WORDS[word.lower()]
        if word.isupper():
            return other.upper()
        return other.capitalize() if word[0].isupper() else other

    return _SIDE_PATTERN.sub(swap, caption)


@dataclass(frozen=True)
class AugmentationSchedule:
    """
    How augmentation strength (0 = none, 1 = the full ranges of [`ImageAugmentation`]) grows with the epoch: the
    seed system started from clean images and strengthened augmentation as the model learned.

    Args:
        kind: "exponential" (`max_strength · (1 − e^(−3·epoch/ramp_epochs))`: 95% at `ramp_epochs`), "linear" (full
            at `ramp_epochs`) or "constant" (`max_strength` from the start).
        max_strength: the strength the ramp tends to, in [0, 1].
        ramp_epochs: how many epochs the ramp takes.
    """

    kind: str = "exponential"
    max_strength: float = 1.0
    ramp_epochs: float = 10.0

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"Unknown augmentation schedule {self.kind!r}; expected one of {SCHEDULE_KINDS}.")
        if not 0.0 <= self.max_strength <= 1.0:
            raise ValueError(f"max_strength={self.max_strength}: augmentation strength must be within [0, 1].")
        if self.ramp_epochs <= 0:
            raise ValueError(f"ramp_epochs={self.ramp_epochs}: the ramp needs a positive number of epochs.")

    def strength(self, epoch: float) -> float:
        if epoch < 0:
            raise ValueError(f"epoch={epoch}: epochs count from 0.")
        if self.kind == "constant":
            return self.max_strength
        if self.kind == "linear":
            return self.max_strength * min(1.0, epoch / self.ramp_epochs)
        return self.max_strength * (1.0 - math.exp(-3.0 * epoch / self.ramp_epochs))


@dataclass(frozen=True)
class ImageAugmentation:
    """
    Random resized crop, horizontal flip and colour jitter on PIL images, each range scaled by a strength in [0, 1].
    The image processor resizes the crop to the model's input size afterwards.

    Args:
        crop_scale: at full strength, the crop keeps between `crop_scale` and all of the image's area.
        crop_ratio: at full strength, the crop's aspect ratio is within [1/crop_ratio, crop_ratio] of the image's.
        brightness / contrast / saturation: at full strength, factors are drawn from [1 − x, 1 + x].
        hue: at full strength, the hue turns by up to ±hue of the colour circle.
        flip: "off" (default: captions describe sides), or "swap": half the images (at full strength) are mirrored
            and "left"/"right" are swapped in their caption. Text in the picture is mirrored too.
    """

    crop_scale: float = 0.6
    crop_ratio: float = 4 / 3
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.05
    flip: str = "off"

    def __post_init__(self):
        if self.flip not in FLIP_MODES:
            raise ValueError(f"Unknown flip mode {self.flip!r}; expected one of {FLIP_MODES}.")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError(f"crop_scale={self.crop_scale}: a crop keeps a fraction of the image in (0, 1].")
        if self.crop_ratio < 1.0:
            raise ValueError(f"crop_ratio={self.crop_ratio}: the largest aspect-ratio change must be ≥ 1.")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: colour jitter amounts must be within [0, 1).")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue={self.hue}: a hue turn must be within [0, 0.5] of the colour circle.")

    def __call__(
        self, image: PIL.Image.Image, caption: str | list[str], strength: float, rng: random.Random
    ) -> tuple[PIL.Image.Image, str | list[str]]:
        """The augmented RGB image and its caption, or list of captions (changed only by a flip)."""
        if strength <= 0.0:
            return image, caption
        image = self._crop(image, strength, rng)
        if self.flip == "swap" and rng.random() < 0.5 * strength:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
            caption = [swap_sides(c) for c in caption] if isinstance(caption, list) else swap_sides(caption)
        return self._jitter(image, strength, rng), caption

    def _crop(self, image: PIL.Image.Image, strength: float, rng: random.Random) -> PIL.Image.Image:
        # torchvision's RandomResizedCrop: an area fraction and an aspect-ratio change (relative to the image's own
        # aspect, so strength 0 keeps the whole picture) drawn until the crop fits; the whole image otherwise.
        width, height = image.size
        min_scale = 1.0 - strength * (1.0 - self.crop_scale)
        log_ratio = strength * math.log(self.crop_ratio)
        for _ in range(10):
            area = width * height * rng.uniform(min_scale, 1.0)
            aspect = width / height * math.exp(rng.uniform(-log_ratio, log_ratio))
            crop_width = round(math.sqrt(area * aspect))
            crop_height = round(math.sqrt(area / aspect))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                left = rng.randint(0, width - crop_width)
                top = rng.randint(0, height - crop_height)
                return image.crop((left, top, left + crop_width, top + crop_height))
        return image

    def _jitter(self, image: PIL.Image.Image, strength: float, rng: random.Random) -> PIL.Image.Image:
        for amount, enhancer in (
            (self.brightness, PIL.ImageEnhance.Brightness),
            (self.contrast, PIL.ImageEnhance.Contrast),
            (self.saturation, PIL.ImageEnhance.Color),
        ):
            if amount > 0:
                image = enhancer(image).enhance(rng.uniform(1.0 - strength * amount, 1.0 + strength * amount))
        if self.hue > 0:
            turn = rng.uniform(-strength * self.hue, strength * self.hue)
            hsv = np.asarray(image.convert("HSV")).copy()
            # PIL's hue channel spans 0..255 for the full circle; uint8 arithmetic wraps around it.
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(turn * 256)) % 256
            image = PIL.Image.fromarray(hsv, mode="HSV").convert("RGB")
        return image


def augmentation_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The random stream of one image in one epoch: a function of (seed, epoch, index) only, so augmentation does not
    depend on batch composition, DataLoader workers or resuming, like the collator's choice of reference."""
    return random.Random(f"captioner-augment:{seed}:{epoch}:{index}")


__all__ = ["AugmentationSchedule", "ImageAugmentation", "augmentation_rng", "swap_sides"]
