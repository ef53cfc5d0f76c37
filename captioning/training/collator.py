"""CaptionCollator: turns CaptionDataset / CaptionPairs items into model inputs (pixel_values, labels,
decoder_attention_mask) plus the references for evaluation, training on one reference per image per epoch, with
optional image augmentation whose strength follows the epoch."""

import random
from collections.abc import Sequence
from typing import Any

import torch

from captioning.training.augmentation import AugmentationSchedule, ImageAugmentation, augmentation_rng
from modeling_captioner import load_image

# The batch keys the model's forward takes; the rest (ids, references, counts) are for the training loop.
MODEL_INPUT_NAMES = ("pixel_values", "vision_features", "labels", "decoder_attention_mask")


class CaptionCollator:
    """
    Collates dataset items into a training / evaluation batch.

    Each image has several reference captions; the model trains on one per image per epoch, picked from
    (seed, epoch, image index) alone, so the choice does not depend on batch composition, shuffling, the number
    of DataLoader workers, or whether the run was resumed. Within every run of `len(captions)` epochs each caption
    of an image is used once, in an order shuffled per image. Items from `CaptionPairs` carry their own `"caption"`,
    which is used as is.

    With `captions_per_image=n` > 1, each image trains on n distinct references per epoch (all of them when it has
    n), in one batch: `labels` then has n rows per image, image-major (rows i·n … i·n+n-1 belong to image i), while
    `pixel_values` / `vision_features` keep one row per image — the model reads each image once for its n captions
    (its encoder, feature-cache read and cross-attention keys/values), as captioning toolkits do with
    `seq_per_img`.

    Call `set_epoch(epoch)` before iterating each epoch's DataLoader. The epoch lives in shared memory, so worker
    processes (forked, spawned or persistent) see the new value.

    Returns from `__call__` a dict with:
        - `pixel_values` (`torch.FloatTensor` of shape `(batch, 3, size, size)`): from the processor's image processor.
        - `labels` (`torch.LongTensor` of shape `(batch, length)`): caption ids followed by EOS, padded with -100 to
          the longest caption of this batch (not to a fixed length).
        - `decoder_attention_mask` (`torch.LongTensor` of shape `(batch, length)`): 1 where `labels` is not -100.
          The model's decoder input is the labels shifted right behind the start token, so these are the start token
          and the caption tokens, i.e. every real decoder input position.
        - `vision_features` (`torch.Tensor`): instead of `pixel_values` when every item carries precomputed
          `"vision_features"` (a feature cache). A batch mixing such items with image items gets `pixel_values`,
          zeros on the rows without an image.
        - `captions` (`list[str]`): the caption each image was trained on (`captions_per_image` per image, one
          per `labels` row).
        - `captions_per_image` (`int`): present when more than 1.
        - `references` (`list[list[str]]`): all reference captions of each image, for evaluation.
        - `image_ids` (`list[str]`) and `indices` (`list[int]`, each item's index in its `CaptionDataset`).
        - `num_dropped` (`int`): items that were `None` (images that failed to load) and were left out. A batch in
          which every item was `None` has no `pixel_values`, `labels` or `decoder_attention_mask`: skip it.
        - `num_tokens` (`int`): the caption tokens of `labels` (those not -100), counted here, before the batch moves
          to an accelerator, so the training loop can weigh its loss without reading a tensor back from the device.

    Args:
        processor (`CaptionerProcessor`): its image processor makes `pixel_values` and its tokenizer `labels`.
        max_length (`int`, *optional*): captions are cut to this many tokens, EOS included.
        seed (`int`, *optional*, defaults to 0): seeds which reference is picked per image and epoch (and the
            augmentation of each image in each epoch).
        augmentation (`ImageAugmentation`, *optional*): augments training images (crop, colour, flips that swap
            "left" and "right" in the caption), from a random stream of (seed, epoch, index) alone. For training
            collators only: evaluation images stay as they are.
        augmentation_schedule (`AugmentationSchedule`, *optional*): the augmentation strength of each epoch
            (defaults to an exponential ramp over 10 epochs).
        captions_per_image (`int`, *optional*, defaults to 1): references trained on per image and epoch, in the
            same batch; an image with fewer references is an error naming it. Not for `CaptionPairs` items.
    """

    def __init__(
        self,
        processor,
        max_length: int | None = None,
        seed: int = 0,
        augmentation: ImageAugmentation | None = None,
        augmentation_schedule: AugmentationSchedule | None = None,
        captions_per_image: int = 1,
    ):
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length={max_length}: a label needs room for at least one token and EOS.")
        if not isinstance(captions_per_image, int) or captions_per_image < 1:
            raise ValueError(f"captions_per_image={captions_per_image!r}: must be a positive integer.")
        self.captions_per_image = captions_per_image
        self.processor = processor
        self.max_length = max_length
        self.seed = seed
        self.augmentation = augmentation
        self.augmentation_schedule = augmentation_schedule or AugmentationSchedule()
        # A shared-memory scalar rather than an int: DataLoader workers hold a copy of the collator, and a plain
        # attribute set in the main process would never reach persistent workers.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch whose references `__call__` picks (call it before iterating the epoch's DataLoader)."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch}: epochs count from 0.")
        self._epoch[0] = epoch

    def pick_caption(self, captions: Sequence[str], index: int, epoch: int | None = None) -> str:
        """
        The reference trained on for image `index` in `epoch` (defaults to the current epoch): a function of
        (seed, epoch, index) only.
        """
        if not captions:
            raise ValueError(f"Image {index} has no reference caption to train on.")
        epoch = self.epoch if epoch is None else epoch
        cycle, position = divmod(epoch, len(captions))
        order = list(range(len(captions)))
        # A string seed is hashed with SHA-512: stable across processes and runs, unlike hash().
        random.Random(f"captioner-collator:{self.seed}:{index}:{cycle}").shuffle(order)
        return captions[order[position]]

    def pick_captions(self, captions: Sequence[str], index: int, epoch: int | None = None) -> list[str]:
        """The `captions_per_image` distinct references trained on for image `index` in `epoch`: a function of
        (seed, epoch, index) only; with one per image, `pick_caption`'s."""
        count = self.captions_per_image
        if count == 1:
            return [self.pick_caption(captions, index, epoch)]
        if len(captions) < count:
            raise ValueError(
                f"Image {index} has {len(captions)} reference caption(s), fewer than captions_per_image={count}."
            )
        epoch = self.epoch if epoch is None else epoch
        order = list(range(len(captions)))
        random.Random(f"captioner-collator-group:{self.seed}:{index}:{epoch}").shuffle(order)
        return [captions[i] for i in order[:count]]

    def augmentation_strength(self, epoch: int | None = None) -> float:
        """The augmentation strength of `epoch` (defaults to the current one): 0 without augmentation."""
        if self.augmentation is None:
            return 0.0
        return self.augmentation_schedule.strength(self.epoch if epoch is None else epoch)

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [item for item in items if item is not None]
        batch: dict[str, Any] = {
            "image_ids": [item["image_id"] for item in kept],
            "indices": [item["index"] for item in kept],
            "references": [list(item["captions"]) for item in kept],
            "captions": [],
            "num_dropped": len(items) - len(kept),
            "num_tokens": 0,
        }
        if not kept:
            return batch
        epoch = self.epoch
        captions = []  # each image's captions, a list per image
        for item in kept:
            caption = item.get("caption")
            if caption is not None and self.captions_per_image > 1:
                raise ValueError(
                    f"Item {item['image_id']!r} carries its own caption (CaptionPairs); captions_per_image="
                    f"{self.captions_per_image} picks several per image from items with one per image."
                )
            captions.append([caption] if caption is not None else self.pick_captions(item["captions"], item["index"]))
        with_features = ["vision_features" in item for item in kept]
        if all(with_features):
            batch["vision_features"] = torch.stack([torch.as_tensor(item["vision_features"]) for item in kept])
        else:
            # Before the labels: a flipped image gets its captions' left and right swapped.
            batch["pixel_values"] = self._pixel_values(kept, captions, epoch)
        batch["captions"] = [caption for image_captions in captions for caption in image_captions]
        if self.captions_per_image > 1:
            batch["captions_per_image"] = self.captions_per_image
        labels = self.processor(text_target=batch["captions"], max_length=self.max_length)["labels"]
        batch["labels"] = labels
        batch["decoder_attention_mask"] = (labels != -100).long()
        batch["num_tokens"] = int(batch["decoder_attention_mask"].sum())
        return batch

    def _pixel_values(self, items: list[dict[str, Any]], captions: list[list[str]], epoch: int) -> torch.Tensor:
        with_image = [i for i, item in enumerate(items) if "image" in item]
        if not with_image:
            raise ValueError("CaptionCollator got items with neither an image nor vision_features.")
        images = [load_image(items[i]["image"]) for i in with_image]
        strength = self.augmentation_strength(epoch)
        if strength > 0:
            for position, i in enumerate(with_image):
                rng = augmentation_rng(self.seed, epoch, items[i]["index"])
                images[position], captions[i] = self.augmentation(images[position], captions[i], strength, rng)
        pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        if len(with_image) == len(items):
            return pixels
        # A batch mixing cached and uncached items (a feature cache filling up): the cached rows get zeros, which
        # the caller never uses since it reads those rows' features from its cache.
        full = pixels.new_zeros((len(items), *pixels.shape[1:]))
        full[with_image] = pixels
        return full


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The part of a `CaptionCollator` batch the model's forward takes."""
    return {name: batch[name] for name in MODEL_INPUT_NAMES if name in batch}


__all__ = ["MODEL_INPUT_NAMES", "CaptionCollator", "model_inputs"]
