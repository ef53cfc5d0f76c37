"""The README's main-job command (`make demo`): it learns its eight scenes and leaves a loadable model folder."""

import pytest
from transformers import AutoModel, AutoProcessor

from captioning.cli import demo


def test_demo_learns_its_scenes_and_saves_a_model_folder(tmp_path, capsys):
    results = demo.main(["--output_dir", str(tmp_path / "demo"), "--steps", "150"])
    assert len(results) == 8
    assert all(caption == reference for reference, caption in results.items())
    assert "8/8 captions match" in capsys.readouterr().out
    assert AutoModel.from_pretrained(tmp_path / "demo").config.decoder_type == "transformer"
    assert AutoProcessor.from_pretrained(tmp_path / "demo").tokenizer.eos_token == "[SEP]"


def test_demo_rejects_bad_flags():
    with pytest.raises(SystemExit):
        demo.main(["--steps", "0"])
    with pytest.raises(SystemExit):
        demo.main(["--encoder", "alexnet"])
