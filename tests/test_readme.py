"""The README's usage snippets run (in order, sharing one namespace), and its two commands are the ones CI and the
Makefile use."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from conftest import scene_images, tiny_model
from transformers import AutoConfig

import push_to_hub
from modeling_captioner import CaptionerProcessor, build_image_processor

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for index, block in enumerate(blocks):
        code = compile(block, f"README.md python block {index}", "exec")
        if block.startswith("# needs the Hub"):
            continue
        exec(code, namespace)
    # The saved-and-reloaded model's beam search gave one caption per image, each from the decoder's start token.
    config = AutoConfig.from_pretrained(namespace["folder"])
    ids = namespace["ids"]
    assert ids.dtype == torch.long and ids.shape[0] == 2 and ids.shape[1] >= 2
    assert ids[:, 0].tolist() == [config.decoder_start_token_id] * 2 and int(ids.max()) < config.vocab_size


def test_readme_commands_are_the_makefile_and_ci_ones():
    bash_blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    commands = [line.split("#")[0].strip() for line in bash_blocks[0].splitlines() if line.strip()]
    assert commands == ["make train", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^train:", makefile, flags=re.MULTILINE) and re.search(r"^test:", makefile, flags=re.MULTILINE)
    assert "configs/synthetic-hard.yaml" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def bash_block_with(command: str) -> list[str]:
    """The lines of the README's bash block that runs `command`."""
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL) if command in b]
    assert len(blocks) == 1, f"expected one bash block with {command!r}"
    return [line for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]


def test_readme_caption_commands_run(tmp_path, tokenizer):
    """The caption command lines, as written, against a tiny model where `make demo` puts one and a photos/ folder."""
    model = tiny_model("resnet", "transformer", tokenizer)
    model.save_pretrained(tmp_path / "outputs" / "demo")
    CaptionerProcessor(build_image_processor(model.config), tokenizer).save_pretrained(tmp_path / "outputs" / "demo")
    (tmp_path / "photos" / "holiday").mkdir(parents=True)
    images, _ = scene_images(4)
    for image, name in zip(images, ["beach.jpg", "dog.png", "holiday/boat.png", "holiday/tent.jpg"], strict=True):
        image.save(tmp_path / "photos" / name)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for line in bash_block_with("captioner caption"):
        completed = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert completed.returncode == 0, f"{line}\n{completed.stderr[-2000:]}"
    assert len((tmp_path / "captions.jsonl").read_text().splitlines()) == 4
    assert len((tmp_path / "captions.csv").read_text().splitlines()) == 1 + 2 * 3  # header + 3 captions per PNG


def test_readme_push_to_hub_commands(tmp_path, tokenizer):
    """The dry-run line runs as written (on a saved tiny model where train.py's default run puts its model); the
    upload line parses."""
    model = tiny_model("resnet", "transformer", tokenizer)
    folder = tmp_path / "outputs" / "synthetic-hard"
    model.save_pretrained(folder)
    CaptionerProcessor(build_image_processor(model.config), tokenizer).save_pretrained(folder)
    dry_run, upload = bash_block_with("push_to_hub.py")
    assert "--dry_run" in dry_run and "--dry_run" not in upload
    command = dry_run.split("#")[0].replace("python push_to_hub.py", f"{sys.executable} {ROOT / 'push_to_hub.py'}")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_TOKEN="")
    completed = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert (tmp_path / "hub-preview" / "model.safetensors").is_file() and (
        tmp_path / "hub-preview" / "README.md"
    ).is_file()
    args = push_to_hub.parse_args(shlex.split(upload.split("#")[0])[2:])
    assert args.private and args.repo_id == "your-name/captioner-synthetic-hard"
