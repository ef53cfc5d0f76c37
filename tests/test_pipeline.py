"""Prompts and the "image-text-to-text" pipeline: the processor turns text into a decoder prompt that generate()
continues, and pipeline() captions PIL images, paths, URLs and lists with a folder or with objects."""

import functools
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from conftest import scene_images, tiny_model
from transformers import pipeline

from modeling_captioner import CaptionerProcessor, build_image_processor

DECODERS = ("transformer", "gpt2", "lstm")


def make_processor(model, tokenizer) -> CaptionerProcessor:
    return CaptionerProcessor(build_image_processor(model.config), tokenizer)


def test_text_becomes_a_decoder_prompt(tokenizer):
    model = tiny_model("resnet", "transformer", tokenizer)
    processor = make_processor(model, tokenizer)
    images, _ = scene_images(3)
    start = model.config.decoder_start_token_id
    words = tokenizer("a red circle", add_special_tokens=False)["input_ids"]

    shared = processor(images=images, text="a red circle")
    assert shared["decoder_input_ids"].tolist() == [[start, *words]] * 3
    assert "labels" not in shared
    assert processor(images=images[:2], text=["a red circle", "a blue square"])["decoder_input_ids"].shape == (2, 4)
    assert processor(images=images, text="")["decoder_input_ids"].tolist() == [[start]] * 3

    with pytest.raises(ValueError, match=r"different numbers of tokens \(\[1, 3\]\)"):
        processor(images=images[:2], text=["a red circle", "two"])
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        processor(images=images, text=["a", "b"])
    with pytest.raises(TypeError, match=r"generation options \['num_beams'\].*generate_kwargs"):
        processor(images=images, text="", num_beams=5)
    # The pipeline asks for padding with several texts: prompts of one length need none, and it is accepted.
    assert processor(images=images[:2], text=["a", "a"], padding=True)["decoder_input_ids"].shape == (2, 2)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_generate_continues_a_prompt(decoder, use_cache, tokenizer):
    """Greedy decoding from the first tokens of a greedy caption reproduces that caption: the prompt is prefilled
    exactly as if the model had generated it (every decoder, with and without the cache)."""
    model = tiny_model("resnet", decoder, tokenizer)
    pixel_values = make_processor(model, tokenizer)(images=scene_images(3)[0])["pixel_values"]
    plain = model.generate(pixel_values, max_new_tokens=8, use_cache=use_cache)
    prompt = plain[:, :4]  # start token + 3 generated tokens
    continued = model.generate(pixel_values, decoder_input_ids=prompt, max_new_tokens=5, use_cache=use_cache)
    assert continued.tolist() == plain.tolist()
    # Without the start token, generate() prepends it, as for any 🤗 encoder-decoder.
    words = torch.tensor([tokenizer("a red", add_special_tokens=False)["input_ids"]] * 3)
    with_start = torch.cat([torch.full((3, 1), model.config.decoder_start_token_id), words], dim=1)
    assert torch.equal(
        model.generate(pixel_values, decoder_input_ids=words, max_new_tokens=5, use_cache=use_cache),
        model.generate(pixel_values, decoder_input_ids=with_start, max_new_tokens=5, use_cache=use_cache),
    )
    beams = model.generate(pixel_values, decoder_input_ids=prompt, num_beams=3, max_new_tokens=5, use_cache=use_cache)
    assert beams[:, :4].tolist() == prompt.tolist()


class _ImageServer(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real HTTP server on 127.0.0.1 serving scene images from a folder."""
    root = tmp_path_factory.mktemp("served")
    images, _ = scene_images(2)
    for i, image in enumerate(images):
        image.save(root / f"scene{i}.png")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_ImageServer, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer):
    model = tiny_model("resnet", "transformer", tokenizer)
    path = tmp_path_factory.mktemp("pipeline-model")
    model.save_pretrained(path)
    make_processor(model, tokenizer).save_pretrained(path)
    return path


def expected_captions(model, processor, images, prompt: str = "", **generate_kwargs) -> list[str]:
    inputs = processor(images=images, text=prompt)
    return processor.batch_decode(model.generate(**inputs, **generate_kwargs), skip_special_tokens=True)


def test_pipeline_from_a_folder_captions_images_paths_urls_and_lists(folder, served, tokenizer):
    root, url = served
    model = tiny_model("resnet", "transformer", tokenizer)
    processor = make_processor(model, tokenizer)
    images, _ = scene_images(2)
    want = expected_captions(model, processor, images, num_beams=3, max_new_tokens=6)

    captioner = pipeline("image-text-to-text", model=str(folder))
    options = {"generate_kwargs": {"num_beams": 3}, "max_new_tokens": 6}
    assert captioner(images=images[0], text="", **options) == [{"input_text": "", "generated_text": want[0]}]
    assert captioner(images=str(root / "scene1.png"), text="", **options)[0]["generated_text"] == want[1]
    assert captioner(images=f"{url}/scene0.png", text="", **options)[0]["generated_text"] == want[0]
    mixed = [images[0], str(root / "scene1.png"), f"{url}/scene0.png"]
    assert [r["generated_text"] for r in captioner(images=mixed, text="", **options)] == [want[0], want[1], want[0]]
    # Without options the model's own generation config applies (its saved default length).
    assert captioner(images=images[0], text="")[0]["generated_text"] == expected_captions(model, processor, images)[0]


def test_pipeline_with_objects_continues_a_prompt(tokenizer):
    model = tiny_model("resnet", "gpt2", tokenizer)
    processor = make_processor(model, tokenizer)
    images, _ = scene_images(2)
    captioner = pipeline("image-text-to-text", model=model, processor=processor)
    want = expected_captions(model, processor, images, prompt="a red", max_new_tokens=5)
    assert all(caption.startswith("a red") for caption in want)
    full = captioner(images=images, text="a red", max_new_tokens=5)
    assert [r["generated_text"] for r in full] == want
    new = captioner(images=images, text="a red", max_new_tokens=5, return_full_text=False)
    assert [r["generated_text"].strip() for r in new] == [caption[len("a red") :].strip() for caption in want]


FRESH_PIPELINE = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_captioner"] = None  # the package is unimportable: remote code only
    from transformers import pipeline
    captioner = pipeline("image-text-to-text", model=sys.argv[1], trust_remote_code=True)
    result = captioner(images=sys.argv[2], text="", generate_kwargs={"num_beams": 3}, max_new_tokens=6)
    print(json.dumps([result[0]["generated_text"], type(captioner.model).__module__]))
    """
)


def test_pipeline_with_remote_code_in_a_fresh_process(folder, served, tokenizer, tmp_path):
    root, _ = served
    model = tiny_model("resnet", "transformer", tokenizer)
    want = expected_captions(
        model, make_processor(model, tokenizer), scene_images(1)[0], num_beams=3, max_new_tokens=6
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_PIPELINE, str(folder), str(root / "scene0.png")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    caption, module = json.loads(completed.stdout.strip().splitlines()[-1])
    assert caption == want[0] and module.startswith("transformers_modules.")


def test_bad_image_in_the_pipeline_is_named(folder, tmp_path):
    captioner = pipeline("image-text-to-text", model=str(folder))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png at all")
    with pytest.raises(Exception, match=r"corrupt\.png"):
        captioner(images=str(corrupt), text="")
    assert torch.is_grad_enabled()  # the pipeline left no global state behind
