"""CaptionerProcessor: turns images of any mode, arrays or files into pixel_values and captions into labels, and
generated ids back into clean captions."""

import os
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers import ProcessorMixin, ViTImageProcessorPil
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
)

# Modes PIL cannot turn into RGB faithfully by .convert("RGB"): 16/32-bit integers saturate, floats are truncated.
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
    values = np.asarray(image, dtype=np.float32)
    peak = float(values.max()) if values.size else 0.0
    if image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    elif image.mode.startswith("I;16") or 255 < peak <= 65535:
        # Pillow opens 16-bit PNG/TIFF as "I;16" or "I": either way the full range is 0..65535.
        values = values / 257.0
    elif peak > 65535:
        values = values * (255.0 / peak)
    return PIL.Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), mode="L")


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB copy of a PIL image of any mode: transparency composited on white, high bit depths scaled to 8 bits."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        image = _to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def array_to_image(array: np.ndarray, where: str) -> PIL.Image.Image:
    """An (H, W), (H, W, C) or (C, H, W) array, uint8 or float in [0, 1], as a PIL image."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or 0 in array.shape:
        raise ValueError(
            f"{where}: an image array must have shape (H, W), (H, W, 1|3|4) or (1|3|4, H, W); got {array.shape}."
        )
    if array.dtype == np.uint16:
        array = (array / 257.0).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{where}: the image array holds NaN or infinite values.")
        scale = 255.0 if array.max() <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return PIL.Image.fromarray(array)


def load_image(image, where: str = "image") -> PIL.Image.Image:
    """
    One image as an upright RGB PIL image.

    Args:
        image: a PIL image (any mode: 1, L, LA, P, RGBA, CMYK, I;16, ...), a numpy array, or a path to an image file.
        where: how to name this image in an error message.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Image file not found: {path}")
        try:
            with PIL.Image.open(path) as opened:
                opened.load()
                image = PIL.ImageOps.exif_transpose(opened)
        except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
            raise ValueError(f"Cannot read image file {path}: {error}") from error
        return to_rgb(image)
    if isinstance(image, PIL.Image.Image):
        # A photo opened by the caller still carries its EXIF orientation: respect it as a viewer would.
        return to_rgb(PIL.ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        return to_rgb(array_to_image(image, where))
    if hasattr(image, "numpy") and hasattr(image, "shape"):  # a torch tensor
        return to_rgb(array_to_image(image.detach().cpu().numpy(), where))
    raise TypeError(f"{where}: expected a PIL image, a numpy array or a file path, got {type(image).__name__}.")


def build_image_processor(config) -> ViTImageProcessorPil:
    """Resize to the config's square image size and normalise as the backbone was trained (ImageNet statistics for
    CNNs, 0.5/0.5 for ViTs trained in the google/vit recipe)."""
    is_vit = getattr(config.vision_config, "model_type", None) == "vit"
    return ViTImageProcessorPil(
        size={"height": config.image_size, "width": config.image_size},
        image_mean=IMAGENET_STANDARD_MEAN if is_vit else IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_STANDARD_STD if is_vit else IMAGENET_DEFAULT_STD,
    )


class CaptionerProcessor(ProcessorMixin):
    r"""
    Image processor + tokenizer of a captioner.

    `processor(images=...)` gives `pixel_values`; `processor(images=..., text=captions)` also gives `labels` (caption
    ids ending in EOS, padded with -100) for training; `batch_decode(ids, skip_special_tokens=True)` gives captions.

    Args:
        image_processor: any 🤗 image processor (see `build_image_processor`).
        tokenizer: the caption tokenizer (its EOS ends every label sequence).
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        max_length: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            images: one image or a list (PIL images of any mode, numpy arrays, file paths).
            text: one caption or a list, one per image, turned into `labels`.
            return_tensors: "pt" (default), "np" or None.
            max_length: captions are cut to this many tokens, EOS included.
        """
        if images is None and text is None:
            raise ValueError("CaptionerProcessor needs images, text or both.")
        data = {}
        if images is not None:
            if not isinstance(images, (list, tuple)):
                images = [images]
            if not images:
                raise ValueError("CaptionerProcessor got an empty list of images.")
            loaded = [load_image(image, where=f"images[{i}]") for i, image in enumerate(images)]
            data.update(self.image_processor(loaded, return_tensors=return_tensors, **kwargs))
        if text is not None:
            captions = [text] if isinstance(text, str) else list(text)
            if images is not None and len(captions) != len(images):
                raise ValueError(f"Got {len(images)} images but {len(captions)} captions; pass one caption per image.")
            data["labels"] = self.caption_labels(captions, max_length=max_length, return_tensors=return_tensors)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def caption_labels(self, captions: list[str], max_length: int | None = None, return_tensors: str | None = "pt"):
        """Caption token ids followed by EOS (the decoder's start token is prepended by the model, not here), padded
        with -100 so the loss ignores padding."""
        eos = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.tokenizer.sep_token_id
        rows = []
        for i, caption in enumerate(captions):
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"text[{i}] is empty or not a string ({caption!r}); every caption needs words.")
            ids = self.tokenizer(caption, add_special_tokens=False)["input_ids"]
            if max_length is not None:
                ids = ids[: max_length - 1]
            rows.append([*ids, eos])
        width = max(len(row) for row in rows)
        labels = [row + [-100] * (width - len(row)) for row in rows]
        return np.asarray(labels, dtype=np.int64) if return_tensors else labels

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return [caption.strip() for caption in self.tokenizer.batch_decode(*args, **kwargs)]

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs).strip()

    @property
    def model_input_names(self) -> list[str]:
        return [*self.image_processor.model_input_names, "labels"]


__all__ = ["CaptionerProcessor", "build_image_processor", "load_image", "to_rgb"]
