"""Pictures of a training run: validation images with generated and reference captions, and the loss / CIDEr-D
curves."""

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt


def save_samples(
    images: list, generated: list[str], references: list[list[str]], path: Path, columns: int = 4
) -> None:
    """A grid of images, each titled with the generated caption and its first reference."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 4.6 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption, refs in zip(axes.flat, images, generated, references, strict=False):
        axis.imshow(image)
        model_lines = textwrap.wrap(f"model: {caption or '(empty)'}", 36)
        reference_lines = textwrap.wrap(f"reference: {refs[0]}", 36)
        # Captions are text, not mathtext: a caption with two "$" (GPT-2's vocabulary has them) failed to render and
        # ended the run after training.
        axis.set_title("\n".join(model_lines + reference_lines), fontsize=8, loc="left", parse_math=False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def save_training_curves(history: list[dict], path: Path) -> None:
    """Training loss per logged step and validation CIDEr-D per epoch, on two axes."""
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    ciders = [(h["step"], h["CIDEr-D"]) for h in history if h.get("CIDEr-D") is not None]
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    if losses:
        loss_axis.plot(*zip(*losses, strict=True), color="tab:blue", label="training loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    cider_axis = loss_axis.twinx()
    if ciders:
        cider_axis.plot(*zip(*ciders, strict=True), "o-", color="tab:red", label="validation CIDEr-D")
    cider_axis.set_ylabel("validation CIDEr-D", color="tab:red")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
