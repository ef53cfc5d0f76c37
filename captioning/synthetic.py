"""Rendered scenes of coloured shapes with their captions: images a tiny captioner can learn on a CPU in seconds."""

import itertools
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right")


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    position: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on the {self.position}"


def render_scene(scene: Scene, image_size: int = 64) -> Image.Image:
    """Draw the scene's shape, in its colour, in the left or right half of a grey canvas."""
    image = Image.new("RGB", (image_size, image_size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    half = image_size // 2
    margin = image_size // 10
    x0 = margin if scene.position == "left" else half + margin
    box = (x0, half - half // 2, x0 + half - 2 * margin, half + half // 2)
    colour = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse(box, fill=colour)
    elif scene.shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
    return image


def all_scenes() -> list[Scene]:
    return [Scene(c, s, p) for c, s, p in itertools.product(COLOURS, SHAPES, POSITIONS)]
