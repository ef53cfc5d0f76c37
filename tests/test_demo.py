"""`captioner demo` (`make demo`): it learns its eight scenes and leaves a loadable model folder."""

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


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--steps", "0"], "argument --steps: must be a whole number ≥ 1, got 0"),
        (["--encoder", "alexnet"], "invalid choice: 'alexnet'"),
    ],
)
def test_demo_rejects_bad_flags(flags, says, capsys):
    with pytest.raises(SystemExit) as exit:
        demo.main(flags)
    assert exit.value.code == 2 and says in capsys.readouterr().err
