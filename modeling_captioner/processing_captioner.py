"""CaptionerProcessor: turns images of any mode, arrays or files into pixel_values, prompts into decoder_input_ids,
captions into labels, and generated ids back into clean captions."""

import os
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers import GenerationConfig, ProcessorMixin, ViTImageProcessorPil
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
)

from .configuration_captioner import special_tokens_from_tokenizer

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

    - `processor(images=...)` gives `pixel_values`.
    - `processor(images=..., text="a photo of")` also gives `decoder_input_ids`: the decoder's start token followed by
      the prompt, which `model.generate` continues (conditional captioning, as BLIP does); an empty text is plain
      captioning. This is what the "image-text-to-text" pipeline calls.
    - `processor(images=..., text_target=captions)` also gives `labels` (caption ids ending in EOS, padded with -100)
      for training, as 🤗 tokenizers name seq2seq targets.
    - `batch_decode(ids, skip_special_tokens=True)` gives captions.

    Args:
        image_processor: any 🤗 image processor (see `build_image_processor`).
        tokenizer: the caption tokenizer (its EOS ends every label sequence).
    """

    # Text options a caller such as the pipeline may pass for `text`; prompts are never padded or truncated (see
    # `prompt_ids`), so they are accepted and not forwarded to the image processor.
    _TEXT_KWARGS = ("padding", "truncation", "add_special_tokens", "return_attention_mask")

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        text_target: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        max_length: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            images: one image or a list (PIL images of any mode, numpy arrays, file paths).
            text: a caption prompt, one for all images or one per image, turned into `decoder_input_ids` for
                generate() to continue. "" means no prompt.
            text_target: one caption or a list, one per image, turned into `labels`.
            return_tensors: "pt" (default), "np" or None.
            max_length: captions in `text_target` are cut to this many tokens, EOS included.
        """
        if images is None and text is None and text_target is None:
            raise ValueError("CaptionerProcessor needs images, text (a prompt), text_target (captions) or a mix.")
        for key in self._TEXT_KWARGS:
            kwargs.pop(key, None)
        generation_defaults = GenerationConfig() if kwargs else None
        generation_options = sorted(key for key in kwargs if hasattr(generation_defaults, key))
        if generation_options:
            raise TypeError(
                f"CaptionerProcessor got generation options {generation_options}: they belong to generate(), e.g. "
                "model.generate(**inputs, num_beams=5), or pipe(..., generate_kwargs={'num_beams': 5}) in a pipeline."
            )
        data = {}
        num_images = None
        if images is not None:
            if not isinstance(images, (list, tuple)):
                images = [images]
            if not images:
                raise ValueError("CaptionerProcessor got an empty list of images.")
            num_images = len(images)
            loaded = [load_image(image, where=f"images[{i}]") for i, image in enumerate(images)]
            data.update(self.image_processor(loaded, return_tensors=return_tensors, **kwargs))
        if text is not None:
            data["decoder_input_ids"] = self.prompt_ids(text, num_images, return_tensors=return_tensors)
        if text_target is not None:
            captions = [text_target] if isinstance(text_target, str) else list(text_target)
            if num_images is not None and len(captions) != num_images:
                raise ValueError(f"Got {num_images} images but {len(captions)} captions; pass one caption per image.")
            data["labels"] = self.caption_labels(captions, max_length=max_length, return_tensors=return_tensors)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def prompt_ids(self, text: str | list[str], num_images: int | None = None, return_tensors: str | None = "pt"):
        """
        The decoder's start token followed by each prompt's tokens, no EOS: generate() continues after the last one.
        A single prompt (a string or a one-element list) is shared by all `num_images` images.

        Prompts are not padded: a padded prompt would put padding between the prompt and the caption, and the decoders
        number positions from the start token, so prompts in one call must have the same number of tokens.
        """
        prompts = [text] if isinstance(text, str) else list(text)
        if not prompts or not all(isinstance(prompt, str) for prompt in prompts):
            raise ValueError(f"text must be a prompt string or a list of them, got {text!r}.")
        if num_images is not None and len(prompts) == 1:
            prompts = prompts * num_images
        if num_images is not None and len(prompts) != num_images:
            raise ValueError(f"Got {num_images} images but {len(prompts)} prompts; pass one prompt, or one per image.")
        start = special_tokens_from_tokenizer(self.tokenizer)["decoder_start_token_id"]
        rows = [[start, *self.tokenizer(prompt.strip(), add_special_tokens=False)["input_ids"]] for prompt in prompts]
        lengths = {len(row) - 1 for row in rows}
        if len(lengths) > 1:
            raise ValueError(
                f"The prompts have different numbers of tokens ({sorted(lengths)}); prompts in one call must have the "
                "same length (prompts are not padded). Caption groups of images with the same prompt separately."
            )
        return np.asarray(rows, dtype=np.int64) if return_tensors else rows

    def caption_labels(self, captions: list[str], max_length: int | None = None, return_tensors: str | None = "pt"):
        """Caption token ids followed by EOS (the decoder's start token is prepended by the model, not here), padded
        with -100 so the loss ignores padding."""
        eos = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.tokenizer.sep_token_id
        rows = []
        for i, caption in enumerate(captions):
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(
                    f"text_target[{i}] is empty or not a string ({caption!r}); every caption needs words."
                )
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

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs):
        """Captions from generate()'s ids, as the "image-text-to-text" pipeline asks for them."""
        if generated_outputs.ndim == 1:
            return self.decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return [*self.image_processor.model_input_names, "decoder_input_ids", "labels"]


__all__ = ["CaptionerProcessor", "build_image_processor", "load_image", "to_rgb"]
