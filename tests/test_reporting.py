"""The run's pictures draw whatever the captions hold."""

from PIL import Image

from captioning.training.reporting import save_samples


def test_samples_draw_captions_with_dollar_signs_and_empty_ones(tmp_path):
    """Matplotlib reads text between two "$" as mathtext; a generated caption is plain text and must not end a run."""
    images = [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")]
    generated = ["of of $ $ $j is is is $ the", ""]
    references = [["costs $5 and $6 ^_^ \\frac"], ["a blue square"]]
    save_samples(images, generated, references, tmp_path / "samples.png")
    assert Image.open(tmp_path / "samples.png").size[0] > 100
