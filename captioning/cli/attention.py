"""Where did the model look when it said this word? Per-token cross-attention maps of a captioner (every decoder
type) and a Show, Attend and Tell style picture of them; also the command `captioner attention`."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    import torch

# torch and transformers (through modeling_captioner) load inside the functions, so that the command answers a
# missing image at once instead of after seconds of imports.

DESCRIPTION = "Caption an image and draw where the model looked for every word (one attention map per token)."
# Tokens that may precede the patch grid of a token backbone (CLS, distillation, register tokens).
_MAX_PREFIX_TOKENS = 8


def _check_can_show(config, layer: int | str) -> None:
    """Fail early (before generating, or before loading weights) on a decoder without attention or a bad `layer`."""
    _check_has_attention(config)
    count = 1 if getattr(config, "decoder_type", None) == "lstm" else getattr(config, "decoder_layers", None)
    _check_layer(layer, count)


def _check_layer(layer: int | str, count: int | None) -> None:
    if not (layer == "mean" or (isinstance(layer, int) and not isinstance(layer, bool))):
        raise ValueError(f"layer must be a layer index or 'mean', got {layer!r}.")
    if layer != "mean" and count is not None and not -count <= layer < count:
        raise ValueError(
            f"layer={layer} is out of range: this decoder has {count} attention layer(s) (indices {-count}.."
            f"{count - 1}), or use 'mean'."
        )


def _check_has_attention(config) -> None:
    if getattr(config, "decoder_type", None) == "lstm" and getattr(config, "attention", None) == "none":
        raise ValueError(
            "This model's decoder has no attention over the image (decoder_type='lstm' with attention='none': each "
            "step reads the mean image feature), so there are no attention maps to show; use a model with "
            "attention='bahdanau' or 'luong', or a Transformer/GPT-2 decoder."
        )


def _trim_caption(ids: list[int], eos_token_id: int | None, pad_token_id: int | None) -> list[int]:
    """A generated row (start token first) up to and including its first EOS, trailing padding removed."""
    if eos_token_id is not None and eos_token_id in ids[1:]:
        ids = ids[: ids.index(eos_token_id, 1) + 1]
    while len(ids) > 1 and pad_token_id is not None and ids[-1] == pad_token_id:
        ids = ids[:-1]
    return ids


def _square_prefix(num_positions: int) -> tuple[int, int, int] | None:
    for prefix in range(min(_MAX_PREFIX_TOKENS, num_positions - 1) + 1):
        side = math.isqrt(num_positions - prefix)
        if side * side == num_positions - prefix:
            return prefix, side, side
    return None


def image_grid(model, pixel_values: torch.Tensor, num_positions: int) -> tuple[int, int, int]:
    r"""
    How the encoder's image positions lie on the image: `(prefix, rows, cols)`, where the first `prefix` positions
    are tokens without a place (a ViT's CLS) and the remaining `rows * cols` are a row-major grid.

    Args:
        model (`CaptionerForConditionalGeneration`):
            The captioner; its backbone is run once on `pixel_values` to see the feature layout.
        pixel_values (`torch.FloatTensor` of shape `(1, num_channels, height, width)`):
            The image as the processor returns it.
        num_positions (`int`):
            The number of image positions the decoder attends to.
    """
    features = model.encoder.backbone_features(pixel_values)
    if features.ndim == 4:  # CNN: (B, C, h, w), flattened row-major by the bridge
        rows, cols = features.shape[2], features.shape[3]
        if rows * cols == num_positions:
            return 0, rows, cols
    else:  # token backbone: (B, N, C), patch grid after prefix tokens
        vision_config = model.config.vision_config
        patch_size = getattr(vision_config, "patch_size", None)
        image_size = getattr(vision_config, "image_size", None)
        if isinstance(patch_size, int) and isinstance(image_size, int) and patch_size > 0:
            side = image_size // patch_size
            if 0 <= num_positions - side * side <= _MAX_PREFIX_TOKENS:
                return num_positions - side * side, side, side
        square = _square_prefix(num_positions)
        if square is not None:
            return square
    raise ValueError(
        f"Cannot lay the decoder's {num_positions} image positions out on a grid (backbone features of shape "
        f"{tuple(features.shape)})."
    )


def _token_string(tokenizer, token_id: int) -> str:
    text = tokenizer.decode([token_id], clean_up_tokenization_spaces=False).strip()
    return text or tokenizer.convert_ids_to_tokens(token_id)


def caption_attention(
    model,
    processor,
    image,
    num_beams: int = 5,
    max_new_tokens: int = 30,
    layer: int | str = -1,
    **generate_kwargs,
) -> dict:
    r"""
    Caption one image and return, for every generated word piece, where the decoder looked while predicting it.

    The caption is generated with `model.generate`; then one teacher-forced forward pass over the generated ids with
    `output_attentions=True` gives the cross-attention of each step: the row of step `t` (input: the tokens before
    word `t`) is the map of word `t`. Maps are averaged over heads, taken from one decoder layer (or averaged over
    layers), and kept only for real word pieces (not the start token, EOS, padding or other special tokens).

    Args:
        model (`CaptionerForConditionalGeneration`):
            Any captioner with attention: decoder_type "transformer" or "gpt2", or "lstm" with attention "bahdanau" or
            "luong" (an "lstm" without attention raises a `ValueError`).
        processor (`CaptionerProcessor`):
            The model's processor (image processor + tokenizer).
        image (`PIL.Image.Image`, `np.ndarray`, `str` or `os.PathLike`):
            One image, in any form `CaptionerProcessor` reads.
        num_beams (`int`, *optional*, defaults to 5):
            Beam width for generation.
        max_new_tokens (`int`, *optional*, defaults to 30):
            Longest caption, in tokens.
        layer (`int` or `"mean"`, *optional*, defaults to -1):
            Which decoder layer's cross-attention to show (Python indexing: -1 is the last), or `"mean"` to average
            over layers. The "lstm" decoder has one attention, `layer` 0 or -1.
        generate_kwargs:
            Passed on to `model.generate` (e.g. `length_penalty`, `min_new_tokens`).

    Returns:
        `dict` with
            - `"caption"` (`str`): the generated caption, special tokens removed.
            - `"tokens"` (`list[str]`): one string per kept word piece, as the tokenizer decodes it alone (`"##s"`).
            - `"token_ids"` (`list[int]`): their ids.
            - `"maps"` (`np.ndarray` of shape `(num_tokens, rows, cols)`, float32): head-averaged attention over the
              image grid; for a ViT the prefix (CLS) tokens are left out, so a map sums to 1 minus `prefix_weight`.
            - `"prefix_weight"` (`np.ndarray` of shape `(num_tokens,)`): attention on the left-out prefix tokens.
            - `"grid"` (`tuple[int, int]`): `(rows, cols)`.
            - `"image"` (`PIL.Image.Image`): the image as loaded (RGB, upright), for `draw_attention`.
    """
    import torch

    from modeling_captioner.processing_captioner import load_image

    _check_can_show(model.config, layer)
    picture = load_image(image)
    pixel_values = processor(images=[picture], return_tensors="pt")["pixel_values"]
    pixel_values = pixel_values.to(device=model.device, dtype=model.dtype)
    config = model.config
    tokenizer = processor.tokenizer

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            generated = model.generate(
                pixel_values, num_beams=num_beams, max_new_tokens=max_new_tokens, **generate_kwargs
            )
            ids = _trim_caption(generated[0].tolist(), config.eos_token_id, config.pad_token_id)
            if len(ids) < 2:
                raise ValueError("generate() returned no caption tokens after the start token.")
            # Step t reads ids[:t + 1] and predicts ids[t + 1]: its cross-attention is the map of word ids[t + 1].
            decoder_input_ids = torch.tensor([ids[:-1]], device=model.device)
            output = model(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids, output_attentions=True)
            grid = image_grid(model, pixel_values, output.encoder_last_hidden_state.shape[1])
    finally:
        model.train(was_training)

    attentions = output.cross_attentions
    if not attentions or any(a is None for a in attentions):
        raise ValueError(f"This model's decoder (decoder_type={config.decoder_type!r}) returned no cross-attention.")
    _check_layer(layer, len(attentions))
    if layer == "mean":
        weights = torch.stack([a[0].float().mean(dim=0) for a in attentions]).mean(dim=0)
    else:
        weights = attentions[layer][0].float().mean(dim=0)  # (heads, T, N) -> (T, N)

    special = set(tokenizer.all_special_ids)
    special |= {config.decoder_start_token_id, config.bos_token_id, config.eos_token_id, config.pad_token_id}
    special.discard(None)
    targets = ids[1:]
    keep = [t for t, token_id in enumerate(targets) if token_id not in special]
    prefix, rows, cols = grid
    kept = weights[keep].cpu().numpy().astype(np.float32)  # (num_tokens, N)
    token_ids = [targets[t] for t in keep]
    return {
        "caption": processor.decode(ids, skip_special_tokens=True),
        "tokens": [_token_string(tokenizer, token_id) for token_id in token_ids],
        "token_ids": token_ids,
        "maps": kept[:, prefix:].reshape(len(keep), rows, cols),
        "prefix_weight": kept[:, :prefix].sum(axis=1),
        "grid": (rows, cols),
        "image": picture,
    }


def _colormap(values: np.ndarray, name: str) -> np.ndarray:
    """RGB in [0, 1] for values in [0, 1]: the classic "jet" built in, any other name from matplotlib."""
    if name == "jet":
        channels = [np.clip(1.5 - np.abs(4.0 * values - centre), 0.0, 1.0) for centre in (3.0, 2.0, 1.0)]
        return np.stack(channels, axis=-1)
    import matplotlib

    return np.asarray(matplotlib.colormaps[name](values))[..., :3]


def overlay_attention(
    image: Image.Image, attention_map: np.ndarray, alpha: float = 0.6, colormap: str = "jet"
) -> Image.Image:
    r"""
    One attention map drawn over its image: upsampled bilinearly to the image's exact size, scaled from its minimum
    to its maximum (as matplotlib's `imshow` shows Show, Attend and Tell's maps; a flat map is all low), coloured and
    blended in.

    Args:
        image (`PIL.Image.Image`):
            The image (RGB).
        attention_map (`np.ndarray` of shape `(rows, cols)`):
            Attention over the image grid, row-major from the top-left.
        alpha (`float`, *optional*, defaults to 0.6):
            Weight of the coloured map in the blend.
        colormap (`str`, *optional*, defaults to `"jet"`):
            `"jet"`, or any matplotlib colormap name (needs matplotlib).
    """
    values = np.asarray(attention_map, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"An attention map must have shape (rows, cols), got {values.shape}.")
    upsampled = np.asarray(Image.fromarray(values, mode="F").resize(image.size, Image.Resampling.BILINEAR))
    low, high = float(upsampled.min()), float(upsampled.max())
    scaled = np.clip((upsampled - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(upsampled)
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    blended = (1.0 - alpha) * base + alpha * _colormap(scaled, colormap)
    return Image.fromarray(np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a word wider than a line is broken between characters."""
    lines: list[str] = []
    for word in text.split() or [""]:
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
            continue
        piece = ""
        for char in word:
            if piece and font.getlength(piece + char) > width:
                lines.append(piece)
                piece = ""
            piece += char
        lines.append(piece)
    return lines


def draw_attention(
    image,
    tokens: list[str],
    maps: np.ndarray,
    path: str | Path,
    columns: int = 5,
    caption: str | None = None,
    panel_size: int | None = 256,
    margin: int = 8,
    alpha: float = 0.6,
    colormap: str = "jet",
) -> list[tuple[int, int, int, int]]:
    r"""
    Write a Show, Attend and Tell style PNG: the image titled with its caption, then one panel per token with its
    attention map over the image. Every panel has the image's aspect ratio (nothing is squashed or cropped).

    Layout: panels of `panel_width × panel_height` in a grid of `min(columns, 1 + len(tokens))` columns, `margin`
    pixels around and between them, each with its title in a band above it (one band height for the whole picture).
    The picture is `ncols * panel_width + (ncols + 1) * margin` pixels wide.

    Args:
        image (`PIL.Image.Image`, `np.ndarray`, `str` or `os.PathLike`):
            The original image (any form `CaptionerProcessor` reads), not the resized model input.
        tokens (`list[str]`):
            The word pieces, one per map.
        maps (`np.ndarray` of shape `(num_tokens, rows, cols)`):
            Their attention maps (as `caption_attention` returns them).
        path (`str` or `Path`):
            Where the PNG goes (folders are created).
        columns (`int`, *optional*, defaults to 5):
            Panels per row.
        caption (`str`, *optional*):
            Title of the image panel; defaults to the tokens joined.
        panel_size (`int`, *optional*, defaults to 256):
            Longer side of a panel in pixels (the image is resized keeping its aspect ratio); `None` keeps the
            image's own size.
        margin (`int`, *optional*, defaults to 8):
            Pixels around and between panels.
        alpha (`float`, *optional*, defaults to 0.6):
            Weight of the coloured map over the image.
        colormap (`str`, *optional*, defaults to `"jet"`):
            `"jet"`, or any matplotlib colormap name.

    Returns:
        `list[tuple[int, int, int, int]]`: the (left, top, right, bottom) box of every panel in the PNG, image first.
    """
    from modeling_captioner.processing_captioner import load_image

    picture = load_image(image)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or len(maps) != len(tokens):
        raise ValueError(
            f"maps must have shape (num_tokens, rows, cols) with one map per token; got {maps.shape} for "
            f"{len(tokens)} tokens."
        )
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}.")
    if panel_size is not None:
        scale = panel_size / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BICUBIC)
    width, height = picture.size

    font = ImageFont.load_default(size=max(10, min(18, width // 12)))
    line_height = sum(font.getmetrics()) + 2
    panels = [picture] + [overlay_attention(picture, m, alpha=alpha, colormap=colormap) for m in maps]
    titles = [caption if caption is not None else " ".join(tokens), *list(tokens)]
    wrapped = [_wrap(title, font, width) for title in titles]
    header = line_height * max(len(lines) for lines in wrapped) + 4

    ncols = min(columns, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    canvas = Image.new(
        "RGB",
        (ncols * width + (ncols + 1) * margin, nrows * (header + height) + (nrows + 1) * margin),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    boxes = []
    for index, (panel, lines) in enumerate(zip(panels, wrapped, strict=True)):
        row, col = divmod(index, ncols)
        left = margin + col * (width + margin)
        top = margin + row * (header + height + margin)
        for number, line in enumerate(lines):
            draw.text((left, top + number * line_height), line, fill="black", font=font)
        canvas.paste(panel, (left, top + header))
        boxes.append((left, top + header, left + width, top + header + height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return boxes


def _layer(text: str) -> int | str:
    if text == "mean":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layer must be an integer or 'mean', got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `attention` subcommand's options."""
    parser.add_argument("--model", required=True, help="A saved model folder (or hub id) with its processor.")
    parser.add_argument("--image", required=True, help="The image file to caption.")
    parser.add_argument("--output", required=True, help="Where the PNG goes.")
    parser.add_argument("--num_beams", type=int, default=5)
    parser.add_argument("--max_new_tokens", type=int, default=30)
    parser.add_argument(
        "--layer",
        type=_layer,
        default=-1,
        help="Decoder layer whose cross-attention to show (-1: the last), or 'mean'.",
    )
    parser.add_argument("--columns", type=int, default=5, help="Panels per row in the picture.")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.set_defaults(run=run)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="captioner attention", description=DESCRIPTION)
    add_arguments(parser)
    return parser.parse_args(argv)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _fail(message: str) -> int:
    print(f"attention_maps: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """The command: returns the exit status (0, or 2 with a one-line message on stderr)."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    if not Path(args.image).is_file():
        return _fail(f"image file not found: {args.image}")
    from transformers import AutoConfig, AutoModel, AutoProcessor

    import modeling_captioner  # noqa: F401  (registers the Auto classes)

    remote = {"trust_remote_code": args.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(args.model, **remote)
    except (OSError, ValueError) as error:
        return _fail(f"cannot load a captioner from --model {args.model}: {_first_line(error)}")
    try:
        _check_can_show(config, args.layer)  # before any weights load
    except ValueError as error:
        return _fail(str(error))
    try:
        model = AutoModel.from_pretrained(args.model, **remote)
        processor = AutoProcessor.from_pretrained(args.model, **remote)
    except (OSError, ValueError) as error:
        return _fail(f"cannot load a captioner from --model {args.model}: {_first_line(error)}")
    try:
        result = caption_attention(
            model,
            processor,
            args.image,
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
            layer=args.layer,
        )
        draw_attention(
            result["image"],
            result["tokens"],
            result["maps"],
            args.output,
            columns=args.columns,
            caption=result["caption"],
        )
    except (OSError, ValueError) as error:
        return _fail(str(error))
    print(result["caption"])
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
