"""captioning.cli.attention for every decoder × encoder: one map per generated word piece on the image grid (ViT CLS
left out), the same maps generate() computes step by step, a clear error without attention, a picture whose panels
keep the image's aspect ratio, and the command's exit statuses."""

import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import checkout_env, scene_images, tiny_model
from PIL import Image

from captioning.cli.attention import caption_attention, draw_attention, main, overlay_attention
from modeling_captioner import CaptionerProcessor, build_image_processor

DECODERS = {
    "transformer": ("transformer", {}),
    "gpt2": ("gpt2", {}),
    "lstm-bahdanau": ("lstm", {"attention": "bahdanau"}),
    "lstm-luong": ("lstm", {"attention": "luong"}),
}
ENCODERS = ["resnet", "vit"]
PREFIX = {"resnet": 0, "vit": 1}  # the tiny ViT: CLS + a 4×4 grid of 8-pixel patches; the tiny ResNet: a 4×4 grid
GENERATION = {"num_beams": 3, "max_new_tokens": 6, "min_new_tokens": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


def captioner(encoder: str, decoder: str, tokenizer, **overrides):
    decoder_type, extra = DECODERS.get(decoder, (decoder, {}))
    model = tiny_model(encoder, decoder_type, tokenizer, **extra, **overrides)
    return model, CaptionerProcessor(build_image_processor(model.config), tokenizer)


def wide_image(width: int = 60, height: int = 30) -> Image.Image:
    scene = scene_images(1)[0][0].resize((width, height))
    pixels = np.asarray(scene).copy()
    pixels[:, :, 2] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]  # no two columns alike
    return Image.fromarray(pixels)


@pytest.mark.parametrize("decoder", list(DECODERS))
@pytest.mark.parametrize("encoder", ENCODERS)
def test_one_map_per_generated_word_piece_on_the_grid(encoder, decoder, tokenizer):
    # Seed 2: every pair generates word pieces, and some also a start token mid-caption (which gets no map).
    model, processor = captioner(encoder, decoder, tokenizer, seed=2)
    image = scene_images(1)[0][0]
    result = caption_attention(model, processor, image, **GENERATION)

    generated = model.generate(processor(images=image)["pixel_values"], **GENERATION)[0].tolist()
    eos = model.config.eos_token_id
    new = generated[1 : generated.index(eos, 1)] if eos in generated[1:] else generated[1:]
    expected = [i for i in new if i not in tokenizer.all_special_ids]
    assert expected, "the random model generated no word piece; change the seed"
    assert result["token_ids"] == expected
    assert result["tokens"] == tokenizer.convert_ids_to_tokens(expected)  # word pieces: "##s" stays "##s"
    assert result["caption"] == processor.decode(generated, skip_special_tokens=True)

    maps = result["maps"]
    assert result["grid"] == (4, 4)
    assert isinstance(maps, np.ndarray) and maps.shape == (len(expected), 4, 4)
    assert (maps >= 0).all()
    sums = maps.sum(axis=(1, 2))
    if PREFIX[encoder]:
        # What the CLS token received is left out: the grid holds the rest of each distribution.
        assert ((result["prefix_weight"] > 0) & (sums < 1)).all()
        np.testing.assert_allclose(sums + result["prefix_weight"], 1.0, atol=1e-5)
    else:
        np.testing.assert_allclose(result["prefix_weight"], 0.0)
        np.testing.assert_allclose(sums, 1.0, atol=1e-5)


@pytest.mark.parametrize("decoder", list(DECODERS))
@pytest.mark.parametrize("encoder", ENCODERS)
def test_maps_are_what_each_generation_step_saw(encoder, decoder, tokenizer):
    """Word t's map is the cross-attention of the step that predicted it (greedy generate, cached, one step at a
    time), head-averaged, CLS dropped, laid out row-major; `layer` picks a layer or averages them."""
    model, processor = captioner(encoder, decoder, tokenizer, seed=2)
    image = scene_images(2)[0][1]
    # Five word pieces: a random GPT-2 would otherwise repeat its start token (special tokens are tested above).
    greedy = {"num_beams": 1, "max_new_tokens": 5, "min_new_tokens": 5, "suppress_tokens": tokenizer.all_special_ids}
    steps = model.generate(
        processor(images=image)["pixel_values"], output_attentions=True, return_dict_in_generate=True, **greedy
    )
    new = steps.sequences[0, 1:].tolist()
    kept = [s for s, i in enumerate(new) if i not in tokenizer.all_special_ids]
    assert len(kept) == 5
    prefix = PREFIX[encoder]
    layers = range(len(steps.cross_attentions[0]))
    per_layer = {
        layer: np.stack([steps.cross_attentions[s][layer][0, :, 0].mean(0)[prefix:].reshape(4, 4) for s in kept])
        for layer in layers
    }
    for layer in [-1, 0, "mean"]:
        result = caption_attention(model, processor, image, layer=layer, **greedy)
        assert result["token_ids"] == [new[s] for s in kept]
        expected = np.mean([per_layer[i] for i in layers], axis=0) if layer == "mean" else per_layer[layers[layer]]
        np.testing.assert_allclose(result["maps"], expected, atol=1e-5)
    if len(layers) > 1:  # the tiny Transformer and GPT-2 decoders have two layers that look differently
        assert not np.allclose(per_layer[0], per_layer[1], atol=1e-4)


def test_a_caption_of_special_tokens_only_has_no_maps(tokenizer):
    model, processor = captioner("resnet", "gpt2", tokenizer, seed=2)  # greedy: the start token, again and again
    result = caption_attention(model, processor, scene_images(1)[0][0], num_beams=1, max_new_tokens=4)
    assert result["tokens"] == [] and result["caption"] == ""
    assert result["maps"].shape == (0, 4, 4)


def test_decoder_without_attention_is_a_clear_error(tokenizer):
    model, processor = captioner("resnet", "lstm", tokenizer, attention="none")
    with pytest.raises(ValueError, match="has no attention over the image"):
        caption_attention(model, processor, scene_images(1)[0][0], num_beams=2, max_new_tokens=3)


def test_bad_layer_is_a_clear_error(tokenizer):
    model, processor = captioner("resnet", "lstm-luong", tokenizer)
    image = scene_images(1)[0][0]
    with pytest.raises(ValueError, match=r"layer=1 is out of range: this decoder has 1 attention layer"):
        caption_attention(model, processor, image, num_beams=2, max_new_tokens=3, layer=1)
    with pytest.raises(ValueError, match="layer must be a layer index or 'mean'"):
        caption_attention(model, processor, image, num_beams=2, max_new_tokens=3, layer="last")


def test_picture_keeps_the_image_and_its_aspect_ratio(tmp_path):
    image = wide_image(60, 30)
    hot_top_right = np.zeros((3, 4, 4), dtype=np.float32)
    hot_top_right[:, 0, 3] = 1.0
    tokens = ["a", "wide", "##ish"]
    path = tmp_path / "exact.png"
    boxes = draw_attention(image, tokens, hot_top_right, path, columns=2, panel_size=None, margin=8)

    with Image.open(path) as opened:
        assert opened.format == "PNG"
        picture = opened.convert("RGB")
    # Four panels (image + 3 tokens) in 2 columns: two rows, 8-pixel margins around and between.
    assert picture.width == 2 * 60 + 3 * 8
    header = (picture.height - 3 * 8) / 2 - 30
    assert header == int(header) and header > 0
    assert [(right - left, bottom - top) for left, top, right, bottom in boxes] == [(60, 30)] * 4
    assert np.array_equal(np.asarray(picture.crop(boxes[0])), np.asarray(image))  # the image itself, unsquashed
    overlay = np.asarray(picture.crop(boxes[1]))
    assert np.array_equal(overlay, np.asarray(overlay_attention(image, hot_top_right[0])))
    colour = (overlay - 0.4 * np.asarray(image)) / 0.6  # what the map added (alpha 0.6): "jet", red hot, blue cold
    assert colour[2, 57, 0] - colour[2, 57, 2] > 100 and colour[27, 2, 2] - colour[27, 2, 0] > 100
    assert boxes[1][1] == boxes[0][1] and boxes[2][0] == boxes[0][0] and boxes[2][1] > boxes[0][3]  # row-major

    boxes = draw_attention(image, tokens, hot_top_right, tmp_path / "default.png")  # 5 columns, 256-pixel panels
    with Image.open(tmp_path / "default.png") as opened:
        assert opened.width == 4 * 256 + 5 * 8
    assert {(right - left, bottom - top) for left, top, right, bottom in boxes} == {(256, 128)}


def test_picture_of_a_real_caption(tokenizer, tmp_path):
    model, processor = captioner("vit", "transformer", tokenizer)
    image = wide_image(90, 45)
    result = caption_attention(model, processor, image, **GENERATION)
    assert result["image"].size == (90, 45)
    boxes = draw_attention(result["image"], result["tokens"], result["maps"], tmp_path / "a.png", columns=3)
    assert len(boxes) == 1 + len(result["tokens"])
    assert {(right - left, bottom - top) for left, top, right, bottom in boxes} == {(256, 128)}
    header, rows = boxes[0][1] - 8, math.ceil(len(boxes) / 3)
    with Image.open(tmp_path / "a.png") as opened:
        assert opened.size == (3 * 256 + 4 * 8, rows * (header + 128) + (rows + 1) * 8)


def save_tiny(folder, encoder: str, decoder: str, tokenizer, **overrides) -> str:
    model, processor = captioner(encoder, decoder, tokenizer, **overrides)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_command_writes_the_picture_and_exits_2_on_a_missing_image(tokenizer, tmp_path):
    folder = save_tiny(tmp_path / "model", "resnet", "transformer", tokenizer)
    image_path = tmp_path / "wide.png"
    wide_image(60, 30).save(image_path)
    output = tmp_path / "out" / "maps.png"
    env = checkout_env(OMP_NUM_THREADS="1")  # run from tmp_path, with this checkout's package
    command = [sys.executable, "-m", "captioning.cli.attention", "--model", folder, "--num_beams", "2"]
    completed = subprocess.run(
        [*command, "--image", str(image_path), "--output", str(output), "--layer", "mean"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().splitlines()[-1] == f"wrote {output}"
    with Image.open(output) as opened:
        assert opened.format == "PNG"
        assert opened.width in {k * 256 + (k + 1) * 8 for k in range(1, 6)}

    missing = subprocess.run(
        [*command, "--image", str(tmp_path / "nope.jpg"), "--output", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"attention_maps: error: image file not found: {tmp_path / 'nope.jpg'}"
    ]
    assert not (tmp_path / "x.png").exists()


def test_command_exits_2_on_a_bad_model_or_one_without_attention(tokenizer, tmp_path, capsys):
    image_path = tmp_path / "scene.png"
    scene_images(1)[0][0].save(image_path)
    plain_lstm = save_tiny(tmp_path / "plain-lstm", "resnet", "lstm", tokenizer, attention="none")
    two_layers = save_tiny(tmp_path / "transformer", "resnet", "transformer", tokenizer)
    capsys.readouterr()
    for model_path, layer, message in [
        (tmp_path / "no-such-model", "-1", "cannot load a captioner from --model"),
        (plain_lstm, "-1", "has no attention over the image"),
        (two_layers, "2", "layer=2 is out of range: this decoder has 2 attention layer(s)"),
    ]:
        argv = ["--model", str(model_path), "--image", str(image_path), "--output", str(tmp_path / "x.png")]
        assert main([*argv, "--layer", layer]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("attention_maps: error: ") and message in lines[0]
    assert not (tmp_path / "x.png").exists()
