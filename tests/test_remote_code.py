"""Saved folders load in a fresh process: with the package imported, and with trust_remote_code=True where
`modeling_captioner` cannot be imported at all (the files saved beside the weights are all it needs)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import PAIRS, checkout_env, scene_images, tiny_model
from fresh_process import run_fresh_process

from modeling_captioner import CaptionerProcessor, build_image_processor


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("saved")
    images, _ = scene_images(2)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(root / f"image{i}.png"))
        image.save(paths[-1])
    folders, expected = [], {}
    for encoder, decoder in PAIRS:
        model = tiny_model(encoder, decoder, tokenizer)
        processor = CaptionerProcessor(build_image_processor(model.config), tokenizer)
        folder = str(root / f"{encoder}-{decoder}")
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        with torch.no_grad():
            ids = model.generate(**processor(images=paths), num_beams=5, max_new_tokens=8)
        folders.append(folder)
        expected[folder] = ids.tolist()
    return folders, paths, expected


@pytest.mark.parametrize("mode", ["installed", "remote"])
def test_fresh_process_loads_and_captions_every_pair(mode, saved, tmp_path):
    folders, images, expected = saved
    for folder in folders:
        for name in (
            "modeling_captioner.py",
            "configuration_captioner.py",
            "processing_captioner.py",
            "model.safetensors",
            "tokenizer.json",
            "processor_config.json",
        ):
            assert os.path.isfile(os.path.join(folder, name)), f"{name} missing from {folder}"
    results = run_fresh_process(mode, folders, images, tmp_path)
    for folder in folders:
        result = results[folder]
        assert result["ids"] == expected[folder]
        assert len(result["captions"]) == 2 and all(isinstance(c, str) for c in result["captions"])
        if mode == "remote":
            assert result["model_module"].startswith("transformers_modules.")
            assert result["processor_module"].startswith("transformers_modules.")
        else:
            assert result["model_module"] == "modeling_captioner.modeling_captioner"


OLD_CHECKPOINT_PROCESS = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import load_file
    sys.modules["modeling_captioner"] = None  # only the folder's own files can define the model
    from transformers import AutoModel
    torch.set_num_threads(1)  # as expected_outputs.safetensors was computed
    results = {}
    for folder in json.loads(sys.argv[1]):
        model, info = AutoModel.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
        expected = load_file(f"{folder}/expected_outputs.safetensors")
        with torch.no_grad():
            logits = model.eval()(
                pixel_values=expected["pixel_values"], decoder_input_ids=expected["decoder_input_ids"]
            ).logits
        results[folder] = {
            "problems": {k: sorted(map(str, v)) for k, v in info.items() if v},
            "module": type(model).__module__,
            "bridge": type(model.encoder.bridge).__name__,
            "equal": torch.equal(logits, expected["logits"]),
        }
    print(json.dumps(results))
    """
)


def test_a_checkpoint_saved_by_earlier_code_loads_as_remote_code(tmp_path):
    """The pre-bridge checkpoints in tests/fixtures/checkpoints, with today's code files beside them, load with
    trust_remote_code where the package cannot be imported: the key mapping travels with the code."""
    fixtures = Path(__file__).parent / "fixtures" / "checkpoints"
    package = Path(__file__).parent.parent / "modeling_captioner"
    folders = []
    for fixture in sorted(fixtures.iterdir()):
        folder = tmp_path / fixture.name
        shutil.copytree(fixture, folder)
        for name in ("modeling_captioner.py", "configuration_captioner.py"):
            shutil.copy(package / name, folder / name)
        folders.append(str(folder))
    env = checkout_env(HF_MODULES_CACHE=str(tmp_path / "modules"))
    env["PYTHONPATH"] = ""
    completed = subprocess.run(
        [sys.executable, "-c", OLD_CHECKPOINT_PROCESS, json.dumps(folders)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    assert len(results) == 3
    for folder, result in results.items():
        assert result["module"].startswith("transformers_modules."), folder
        assert result == {**result, "problems": {}, "bridge": "CaptionerBridge", "equal": True}, folder
