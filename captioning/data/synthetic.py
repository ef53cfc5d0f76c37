"""Rendered scenes of coloured shapes with their captions: the eight-scene toy of the demo and the built-in
`synthetic` dataset (train/validation/test splits of shape scenes, five Flickr8k-style captions per image)."""

import itertools
import math
import random
from dataclasses import dataclass

import numpy as np
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


def render_scene(scene: "Scene | ShapesScene", image_size: int = 64) -> Image.Image:
    """
    Draws a scene as an RGB image of `image_size` × `image_size` pixels.

    A `Scene` (the demo's toy) is one shape, in its colour, in the left or right half of a grey canvas; a
    `ShapesScene` (the `synthetic` dataset) is drawn by `render_shapes`.
    """
    if isinstance(scene, ShapesScene):
        return render_shapes(scene, image_size)
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


# ---------------------------------------------------------------------------------------------------------------
# The built-in `synthetic` dataset
# ---------------------------------------------------------------------------------------------------------------

SCENE_COLOURS = {**COLOURS, "purple": (140, 50, 190)}
SCENE_SHAPES = ("circle", "square", "triangle", "diamond")
SCENE_COUNTS = (1, 2, 3)
SCENE_SIZES = ("small", "large")
SCENE_REGIONS = ("left", "right", "top", "bottom", "centre")
SCENE_BACKGROUNDS = ("plain", "noisy", "striped")

# Object diameters as a fraction of the image side. At the tiny preset's 32×32 input a small shape is ~5 pixels
# across and a large one ~8, still told apart after resizing.
DIAMETERS = {"small": 0.15, "large": 0.26}
# Gap kept between objects and between an object and the image border, as a fraction of the side.
_GAP = 0.03
# Positions are stored on a 1/256 grid so that two scenes are equal exactly when they draw the same picture.
_GRID = 256

DEFAULT_SYNTHETIC_SIZES = {"train": 3000, "validation": 250, "test": 250}
DEFAULT_SYNTHETIC_IMAGE_SIZE = 64


@dataclass(frozen=True)
class ShapesScene:
    """
    The full specification of one image of the `synthetic` dataset: `render_shapes` draws it deterministically.

    Args:
        shape (`str`): one of `SCENE_SHAPES`.
        colour (`str`): one of `SCENE_COLOURS`.
        count (`int`): how many copies of the shape (1 to 3).
        size (`str`): `"small"` or `"large"`.
        region (`str`): where the group sits: `"left"`, `"right"`, `"top"`, `"bottom"` or `"centre"`.
        background (`str`): `"plain"`, `"noisy"` (light pixel noise) or `"striped"` (faint stripes).
        tone (`int`): grey level of the background (0..255).
        positions (`tuple[tuple[float, float], ...]`): centre of each object as (x, y) fractions of the side.
        texture_seed (`int`): seed of the background texture.
    """

    shape: str
    colour: str
    count: int
    size: str
    region: str
    background: str = "plain"
    tone: int = 128
    positions: tuple[tuple[float, float], ...] = ((0.5, 0.5),)
    texture_seed: int = 0

    def __post_init__(self):
        for field, value, allowed in (
            ("shape", self.shape, SCENE_SHAPES),
            ("colour", self.colour, tuple(SCENE_COLOURS)),
            ("count", self.count, SCENE_COUNTS),
            ("size", self.size, SCENE_SIZES),
            ("region", self.region, SCENE_REGIONS),
            ("background", self.background, SCENE_BACKGROUNDS),
        ):
            if value not in allowed:
                raise ValueError(f"ShapesScene.{field}={value!r} is not one of {allowed}.")
        if len(self.positions) != self.count:
            raise ValueError(
                f"ShapesScene has count={self.count} but {len(self.positions)} positions; give one (x, y) per object."
            )

    @property
    def content(self) -> tuple[str, str, int, str, str]:
        """What the captions describe: (shape, colour, count, size, region)."""
        return (self.shape, self.colour, self.count, self.size, self.region)


def _background(scene: ShapesScene, side: int) -> np.ndarray:
    canvas = np.full((side, side, 3), float(scene.tone), dtype=np.float32)
    if scene.background == "noisy":
        rng = np.random.default_rng(scene.texture_seed)
        canvas += rng.normal(0.0, 10.0, size=(side, side, 1)).astype(np.float32)
    elif scene.background == "striped":
        rng = np.random.default_rng(scene.texture_seed)
        period = rng.uniform(0.08, 0.16) * side
        angle = rng.choice([0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4])
        ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) / period
        canvas += (12.0 * np.sign(np.sin(2 * math.pi * phase)))[..., None]
    return np.clip(canvas, 0, 255).astype(np.uint8)


def render_shapes(scene: ShapesScene, image_size: int = DEFAULT_SYNTHETIC_IMAGE_SIZE) -> Image.Image:
    """
    Draws a `ShapesScene` as an RGB image of `image_size` × `image_size` pixels.

    The picture is a pure function of the scene and the size: shapes are drawn at twice the size and downsampled,
    so their edges are smooth at any size.
    """
    if image_size < 8:
        raise ValueError(f"image_size={image_size} is too small to draw shapes; use at least 8 pixels.")
    side = 2 * image_size
    image = Image.fromarray(_background(scene, side), mode="RGB")
    draw = ImageDraw.Draw(image)
    radius = DIAMETERS[scene.size] * side / 2
    colour = SCENE_COLOURS[scene.colour]
    for x, y in scene.positions:
        cx, cy = x * side, y * side
        if scene.shape == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
        elif scene.shape == "square":
            # A square with the circle's area would look smaller than it; the inscribed square of a slightly larger
            # circle looks the same size as the circle.
            half = radius * 0.9
            draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=colour)
        elif scene.shape == "triangle":
            draw.polygon(
                [(cx - radius, cy + radius * 0.8), (cx + radius, cy + radius * 0.8), (cx, cy - radius)], fill=colour
            )
        else:  # diamond
            draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=colour)
    return image.resize((image_size, image_size), Image.Resampling.BOX)


def _zone(region: str, radius: float) -> tuple[float, float, float, float]:
    """Where object centres may lie for a region: (x_min, x_max, y_min, y_max) as fractions of the side."""
    near, far = _GAP + radius, 1.0 - _GAP - radius
    # Objects of a side region stay clear of the middle line, so "left" never reaches into the right half.
    inner = 0.5 - _GAP - radius
    if region == "left":
        return near, inner, near, far
    if region == "right":
        return 1.0 - inner, far, near, far
    if region == "top":
        return near, far, near, inner
    if region == "bottom":
        return near, far, 1.0 - inner, far
    return 0.32, 0.68, 0.32, 0.68  # centre


def _group_is_in_region(region: str, xs: list[float], ys: list[float]) -> bool:
    # The group's centre of mass decides the region a viewer names: a "left" group hugging the top edge would read
    # as "top left", so side groups keep their centre of mass near the middle of the other axis.
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    if region in ("left", "right"):
        return 0.3 <= mean_y <= 0.7
    if region in ("top", "bottom"):
        return 0.3 <= mean_x <= 0.7
    return 0.42 <= mean_x <= 0.58 and 0.42 <= mean_y <= 0.58


def _fallback_layout(region: str, count: int, radius: float) -> list[tuple[float, float]]:
    # Evenly spaced along the region's long axis; only used if random placement keeps failing (it practically
    # never does with the sizes above), so every content combination can always be drawn.
    x0, x1, y0, y1 = _zone(region, radius)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if count == 1:
        return [(cx, cy)]
    step = 2 * radius + _GAP
    offsets = [(i - (count - 1) / 2) * step for i in range(count)]
    if region in ("top", "bottom"):
        return [(0.5 + o, cy) for o in offsets]
    if region in ("left", "right"):
        return [(cx, 0.5 + o) for o in offsets]
    if count == 2:
        return [(0.5 - step / 2, 0.5), (0.5 + step / 2, 0.5)]
    height = step * math.sqrt(3) / 2
    return [(0.5 - step / 2, 0.5 + height / 3), (0.5 + step / 2, 0.5 + height / 3), (0.5, 0.5 - 2 * height / 3)]


def _place(region: str, count: int, size: str, rng: random.Random) -> tuple[tuple[float, float], ...]:
    radius = DIAMETERS[size] / 2
    x0, x1, y0, y1 = _zone(region, radius)
    min_distance = 2 * radius + _GAP
    for _ in range(200):
        points: list[tuple[float, float]] = []
        for _ in range(count):
            for _ in range(50):
                x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
                if all(math.dist((x, y), p) >= min_distance for p in points):
                    points.append((x, y))
                    break
        if len(points) == count and _group_is_in_region(region, [p[0] for p in points], [p[1] for p in points]):
            break
    else:
        points = _fallback_layout(region, count, radius)
    return tuple((round(x * _GRID) / _GRID, round(y * _GRID) / _GRID) for x, y in points)


def random_scene(rng: random.Random, content: tuple[str, str, int, str, str] | None = None) -> ShapesScene:
    """
    A random `ShapesScene` drawn with `rng`: random content (unless given as (shape, colour, count, size, region)),
    layout, background kind, tone and texture.
    """
    if content is None:
        content = (
            rng.choice(SCENE_SHAPES),
            rng.choice(tuple(SCENE_COLOURS)),
            rng.choice(SCENE_COUNTS),
            rng.choice(SCENE_SIZES),
            rng.choice(SCENE_REGIONS),
        )
    shape, colour, count, size, region = content
    return ShapesScene(
        shape=shape,
        colour=colour,
        count=count,
        size=size,
        region=region,
        background=rng.choice(SCENE_BACKGROUNDS),
        tone=rng.randint(105, 165),
        positions=_place(region, count, size, rng),
        texture_seed=rng.randrange(2**31),
    )


# Caption wording. Several annotators describing the same picture: different words for the count, size, shape and
# place, some leave the size out, one in a while only says "shapes", one mentions the background.
_COUNT_WORDS = {1: ("a", "one", "a single"), 2: ("two", "a pair of"), 3: ("three", "a group of three")}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_SHAPE_WORDS = {
    "circle": (("circle", "circles"), ("round shape", "round shapes")),
    "square": (("square", "squares"), ("block", "blocks")),
    "triangle": (("triangle", "triangles"),),
    "diamond": (("diamond", "diamonds"),),
}
_SMALL_CIRCLE_WORDS = ("dot", "dots")  # nobody calls a large circle a dot
_REGION_WORDS = {
    "left": ("on the left", "on the left side", "at the left of the picture", "in the left half of the image"),
    "right": ("on the right", "on the right side", "at the right of the picture", "in the right half of the image"),
    "top": ("at the top", "near the top", "at the top of the picture", "in the upper half of the image"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the picture", "in the lower half of the image"),
    "centre": ("in the middle", "in the center", "in the middle of the picture", "in the center of the image"),
}
_BACKGROUND_WORDS = {"plain": ("plain", "grey"), "noisy": ("noisy", "grey noisy"), "striped": ("striped",)}
_TEMPLATES = (
    "{np} {where}",
    "there {be} {np} {where}",
    "{where} there {be} {np}",
    "{np} {be} {where}",
    "a picture of {np} {where}",
    "{np} drawn {where} on a {bg} background",
    "{count} {colour} {shapes} {where}",
    "a {bg} background with {np} {where}",
)


def _noun_phrase(scene: ShapesScene, rng: random.Random, with_size: bool) -> str:
    words = list(_SHAPE_WORDS[scene.shape])
    if scene.shape == "circle" and scene.size == "small":
        words.append(_SMALL_CIRCLE_WORDS)
    singular, plural = rng.choice(words)
    noun = singular if scene.count == 1 else plural
    count = rng.choice(_COUNT_WORDS[scene.count])
    size = f"{rng.choice(_SIZE_WORDS[scene.size])} " if with_size else ""
    return f"{count} {size}{scene.colour} {noun}"


def scene_captions(scene: ShapesScene, rng: random.Random, count: int = 5) -> list[str]:
    """
    `count` different Flickr8k-style captions of one scene (lower case, no final period), drawn with `rng`.

    Every caption states the colour, count and place; most name the shape and the size, in varied words, so that
    each caption scored against the others agrees well but not perfectly, as human references do.
    """
    if not 1 <= count <= len(_TEMPLATES):
        raise ValueError(f"count={count}: scene_captions writes between 1 and {len(_TEMPLATES)} captions.")
    # Distinct templates (each has fixed words the others lack), so the captions of an image are all different.
    captions = []
    for index in rng.sample(range(len(_TEMPLATES)), count):
        captions.append(
            _TEMPLATES[index].format(
                np=_noun_phrase(scene, rng, with_size=rng.random() < 0.7),
                where=rng.choice(_REGION_WORDS[scene.region]),
                be="is" if scene.count == 1 else "are",
                bg=rng.choice(_BACKGROUND_WORDS[scene.background]),
                count=rng.choice(_COUNT_WORDS[scene.count]),
                colour=scene.colour,
                shapes="shape" if scene.count == 1 else "shapes",
            )
        )
    return captions


def synthetic_vocabulary() -> list[str]:
    """Every word a `synthetic` caption can use, sorted (the captioner's target vocabulary for this dataset)."""
    words = set(SCENE_COLOURS) | {"shape", "shapes", "is", "are", "there"}
    phrases = [
        *itertools.chain.from_iterable(_COUNT_WORDS.values()),
        *itertools.chain.from_iterable(_SIZE_WORDS.values()),
        *itertools.chain.from_iterable(itertools.chain.from_iterable(_SHAPE_WORDS.values())),
        *_SMALL_CIRCLE_WORDS,
        *itertools.chain.from_iterable(_REGION_WORDS.values()),
        *itertools.chain.from_iterable(_BACKGROUND_WORDS.values()),
        *(template.replace("{", " ").replace("}", " ") for template in _TEMPLATES),
    ]
    for phrase in phrases:
        words.update(word for word in phrase.split() if word not in ("np", "where", "be", "bg", "count", "colour"))
    return sorted(words)


@dataclass(frozen=True)
class SyntheticExample:
    """One image of the `synthetic` dataset: its id, its scene (drawn on demand) and its five captions."""

    image_id: str
    scene: ShapesScene
    captions: tuple[str, ...]


def split_sizes(sizes: dict[str, int] | tuple[int, int, int] | None) -> dict[str, int]:
    if sizes is None:
        return dict(DEFAULT_SYNTHETIC_SIZES)
    if isinstance(sizes, dict):
        unknown = set(sizes) - set(DEFAULT_SYNTHETIC_SIZES)
        if unknown:
            raise ValueError(
                f"synthetic sizes has unknown split(s) {sorted(unknown)}; expected keys train, validation, test."
            )
        resolved = {**DEFAULT_SYNTHETIC_SIZES, **sizes}
    else:
        if len(sizes) != 3:
            raise ValueError(f"synthetic sizes={sizes!r}: expected (train, validation, test) image counts.")
        resolved = dict(zip(DEFAULT_SYNTHETIC_SIZES, sizes, strict=True))
    for split, size in resolved.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"synthetic sizes[{split!r}]={size!r}: every split needs a whole number of images >= 1.")
    return resolved


def build_synthetic_splits(
    seed: int = 0, sizes: dict[str, int] | tuple[int, int, int] | None = None, captions_per_image: int = 5
) -> dict[str, list[SyntheticExample]]:
    """
    Builds the `synthetic` dataset's specs and captions: scenes of 1–3 shapes of one colour and size in one region
    of a plain, noisy or striped grey background, each with `captions_per_image` reference captions.

    Only specifications are built (fast, ~0.1 s for the default sizes); `render_scene(example.scene, image_size)`
    draws an image when it is needed.

    Args:
        seed (`int`, *optional*, defaults to 0):
            Everything is a function of the seed: the same seed gives the same scenes and captions.
        sizes (`dict[str, int]` or `tuple[int, int, int]`, *optional*):
            Images per split, as `{"train": ..., "validation": ..., "test": ...}` (missing keys keep their default)
            or a (train, validation, test) tuple. Defaults to `DEFAULT_SYNTHETIC_SIZES` (3000/250/250).
        captions_per_image (`int`, *optional*, defaults to 5):
            Reference captions per image.

    Returns:
        `dict[str, list[SyntheticExample]]`: keys "train", "validation" and "test". No scene occurs twice, within a
        split or across splits. Each split cycles through all 600 (shape, colour, count, size, region) contents in
        a shuffled order, so every content is about equally frequent. The test split is drawn first and the
        training split last, so test and validation do not change when only the training size changes.
    """
    resolved = split_sizes(sizes)
    taken: set[ShapesScene] = set()
    contents = list(itertools.product(SCENE_SHAPES, SCENE_COLOURS, SCENE_COUNTS, SCENE_SIZES, SCENE_REGIONS))
    splits: dict[str, list[SyntheticExample]] = {}
    for split in ("test", "validation", "train"):
        # String seeds are hashed with SHA-512 by `random`, so this is stable across runs and Python versions.
        rng = random.Random(f"captioner-synthetic:{seed}:{split}")
        examples = []
        order: list[tuple] = []
        while len(examples) < resolved[split]:
            if not order:
                order = rng.sample(contents, len(contents))
            content = order.pop()
            scene = random_scene(rng, content)
            while scene in taken:  # practically never: positions and textures are continuous
                scene = random_scene(rng, content)
            taken.add(scene)
            image_id = f"synthetic-{split}-{len(examples):05d}"
            examples.append(SyntheticExample(image_id, scene, tuple(scene_captions(scene, rng, captions_per_image))))
        splits[split] = examples
    return {split: splits[split] for split in ("train", "validation", "test")}


__all__ = [
    "COLOURS",
    "DEFAULT_SYNTHETIC_IMAGE_SIZE",
    "DEFAULT_SYNTHETIC_SIZES",
    "SHAPES",
    "Scene",
    "ShapesScene",
    "SyntheticExample",
    "all_scenes",
    "build_synthetic_splits",
    "random_scene",
    "render_scene",
    "render_shapes",
    "scene_captions",
    "synthetic_vocabulary",
]
