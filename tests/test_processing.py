"""CaptionerProcessor: images of every PIL mode, arrays and files become pixel_values; captions become labels; bad
files give errors that name them."""

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image
from transformers import AutoProcessor

from modeling_captioner import CaptionerProcessor, build_image_processor, load_image


@pytest.fixture
def processor(tokenizer):
    return CaptionerProcessor(build_image_processor(tiny_config("resnet", "transformer", tokenizer)), tokenizer)


def red_square(mode: str) -> Image.Image:
    return Image.new("RGB", (20, 10), (200, 30, 30)).convert(mode)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"])
def test_every_pil_mode_becomes_rgb_pixel_values(processor, mode):
    image = red_square(mode) if mode not in ("I;16", "I", "F") else None
    if mode == "I;16":
        image = Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16))
        assert image.mode == "I;16"
    elif mode == "I":
        image = Image.fromarray(np.full((10, 20), 40000, dtype=np.int32), mode="I")
    elif mode == "F":
        image = Image.fromarray(np.full((10, 20), 0.6, dtype=np.float32), mode="F")
    rgb = load_image(image)
    assert rgb.mode == "RGB" and rgb.size == (20, 10)
    pixel_values = processor(images=image)["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32) and pixel_values.dtype == torch.float32
    if mode in ("I;16", "I", "F"):
        # High bit depths are scaled, not saturated: 40000/65535 and 0.6 are mid-grey, not white.
        assert 120 <= np.asarray(rgb)[0, 0, 0] <= 170


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(load_image(image))[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (4, 4), 0)
    palette.info["transparency"] = 0
    assert np.asarray(load_image(palette))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    "array",
    [
        np.full((10, 20, 3), 128, dtype=np.uint8),
        np.full((10, 20), 0.5, dtype=np.float32),
        np.full((3, 10, 20), 0.5, dtype=np.float64),
        np.full((10, 20, 4), 255, dtype=np.uint8),
        np.full((10, 20, 1), 30000, dtype=np.uint16),
    ],
    ids=["hwc-uint8", "hw-float", "chw-float", "rgba-uint8", "hw1-uint16"],
)
def test_numpy_arrays(processor, array):
    image = load_image(array)
    assert image.mode == "RGB" and image.size == (20, 10)
    assert processor(images=[array, array])["pixel_values"].shape == (2, 3, 32, 32)


def test_bad_arrays_are_named(processor):
    with pytest.raises(ValueError, match=r"images\[1\]: an image array must have shape"):
        processor(images=[np.zeros((4, 4, 3), np.uint8), np.zeros((2, 4, 4, 3), np.uint8)])
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.full((4, 4), np.nan, dtype=np.float32))
    with pytest.raises(TypeError, match=r"images\[0\]: expected a PIL image, a numpy array or a file path, got dict"):
        processor(images=[{"not": "an image"}])
    with pytest.raises(ValueError, match="empty list"):
        processor(images=[])


def test_files_and_exif_orientation(processor, tmp_path):
    plain = tmp_path / "plain.png"
    red_square("RGB").save(plain)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    red_square("RGB").save(rotated, exif=exif.tobytes())
    assert load_image(plain).size == (20, 10)
    assert load_image(str(rotated)).size == (10, 20)
    with Image.open(rotated) as opened:
        assert load_image(opened).size == (10, 20)
    assert processor(images=[str(plain), rotated])["pixel_values"].shape == (2, 3, 32, 32)


def test_unreadable_and_missing_files_are_named(processor, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ValueError, match=r"Cannot read image file .*corrupt\.jpg"):
        processor(images=[corrupt])
    truncated = tmp_path / "truncated.png"
    red_square("RGB").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"Cannot read image file .*truncated\.png"):
        load_image(truncated)
    with pytest.raises(FileNotFoundError, match=r"Image file not found: .*missing\.png"):
        processor(images=str(tmp_path / "missing.png"))


def test_captions_become_labels_ending_in_eos(processor, tokenizer):
    batch = processor(images=[red_square("RGB")] * 2, text_target=["a red square", "a red square on the left"])
    labels = batch["labels"]
    short = tokenizer("a red square", add_special_tokens=False)["input_ids"]
    assert labels.dtype == torch.int64 and labels.shape[0] == 2
    assert labels[0, : len(short) + 1].tolist() == [*short, tokenizer.eos_token_id]
    assert (labels[0, len(short) + 1 :] == -100).all()
    assert tokenizer.cls_token_id not in labels.tolist()[1]
    assert processor(text_target="a red square", max_length=3)["labels"].shape == (1, 3)


def test_bad_captions(processor):
    with pytest.raises(ValueError, match=r"text_target\[1\] is empty"):
        processor(text_target=["a dog", "   "])
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        processor(images=[red_square("RGB")] * 2, text_target=["a dog"])
    with pytest.raises(ValueError, match="needs images, text"):
        processor()


def test_batch_decode_gives_clean_captions(processor, tokenizer):
    ids = tokenizer(["a yellow triangle on the right", "two children play"], padding=True)["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == [
        "a yellow triangle on the right",
        "two children play",
    ]
    assert "##" not in processor.decode(tokenizer("zxqv")["input_ids"], skip_special_tokens=True)


def test_auto_processor_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is CaptionerProcessor
    image = red_square("RGB")
    torch.testing.assert_close(loaded(images=image)["pixel_values"], processor(images=image)["pixel_values"])
