"""The `hard` variant of the built-in synthetic dataset: scenes of 2–5 drawn objects of ten kinds (shapes, houses,
trees, cars, people, boats, flowers) on outdoor, indoor or plain backgrounds, with noise, blur and JPEG artefacts,
captioned by five annotators who each write in their own style. Spatial relations are read off the drawn pixels."""

import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from captioning.data.synthetic import SyntheticExample, split_sizes

KINDS = ("circle", "square", "triangle", "star", "house", "tree", "car", "person", "boat", "flower")
HARD_COLOURS = {
    "red": (210, 35, 35),
    "green": (35, 160, 60),
    "blue": (40, 70, 215),
    "yellow": (240, 205, 30),
    "purple": (135, 55, 185),
    "orange": (245, 135, 25),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}
OBJECT_SIZES = {"small": 0.17, "large": 0.27}  # bounding-box side as a fraction of the image side
BACKGROUNDS = ("outdoor", "indoor", "plain")
PLAIN_TONES = {"grey": (150, 150, 150), "beige": (215, 200, 165), "light blue": (175, 200, 225)}
RELATIONS = ("left of", "right of", "above", "below", "next to", "in front of", "behind")

DEFAULT_HARD_IMAGE_SIZE = 160
# Relations are measured on masks drawn at this size, whatever size the images are later rendered at.
_MASK_SIDE = 160
_GRID = 256


@dataclass(frozen=True)
class HardObject:
    """One drawn object: its kind, colour, size, centre (x, y) as fractions of the side, and whether it faces left."""

    kind: str
    colour: str
    size: str
    x: float
    y: float
    mirrored: bool = False

    def __post_init__(self):
        for field, value, allowed in (
            ("kind", self.kind, KINDS),
            ("colour", self.colour, tuple(HARD_COLOURS)),
            ("size", self.size, tuple(OBJECT_SIZES)),
        ):
            if value not in allowed:
                raise ValueError(f"HardObject.{field}={value!r} is not one of {allowed}.")


@dataclass(frozen=True)
class HardScene:
    """
    The full specification of one image of the `hard` synthetic set; `render_hard_scene` draws it deterministically.

    Args:
        objects (`tuple[HardObject, ...]`): 2 to 5 objects in drawing order (later ones cover earlier ones), of one
            to three kinds; captions count the objects of a kind ("three cars").
        background (`str`): `"outdoor"` (sky over ground), `"indoor"` (wall, floor and a window) or `"plain"`.
        tone (`str`): the plain background's colour name (one of `PLAIN_TONES`), else `""`.
        horizon (`float`): where sky meets ground, or wall meets floor, as a fraction of the height.
        noise (`float`): standard deviation of pixel noise (0 for none).
        blur (`float`): Gaussian blur radius at 160 px (0 for none).
        jpeg_quality (`int`): JPEG quality the image is re-encoded at (0 for none).
        seed (`int`): seeds the noise.
    """

    objects: tuple[HardObject, ...]
    background: str
    tone: str = ""
    horizon: float = 0.5
    noise: float = 0.0
    blur: float = 0.0
    jpeg_quality: int = 0
    seed: int = 0

    def __post_init__(self):
        if not 2 <= len(self.objects) <= 5:
            raise ValueError(f"HardScene has {len(self.objects)} objects; it draws between 2 and 5.")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"HardScene.background={self.background!r} is not one of {BACKGROUNDS}.")
        if self.background == "plain" and self.tone not in PLAIN_TONES:
            raise ValueError(f"HardScene.tone={self.tone!r}: a plain background is one of {tuple(PLAIN_TONES)}.")

    def by_kind(self) -> dict[str, list[HardObject]]:
        """Objects by kind, in the order the kinds were first drawn."""
        kinds: dict[str, list[HardObject]] = {}
        for obj in self.objects:
            kinds.setdefault(obj.kind, []).append(obj)
        return kinds

    @property
    def degraded(self) -> dict[str, bool]:
        """The degradations strong enough for an annotator to mention."""
        return {"blurry": self.blur >= 1.2, "grainy": self.noise >= 14}


# ---------------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------------


def _draw_object(draw: ImageDraw.ImageDraw, obj: HardObject, side: float, fill=None) -> None:
    """Draws `obj` on `draw` (a canvas `side` pixels wide). `fill` paints every part in one colour (for masks)."""
    colour = fill or HARD_COLOURS[obj.colour]
    dark = fill or (60, 40, 25)
    black = fill or (20, 20, 20)
    white = fill or (250, 250, 250)
    half = OBJECT_SIZES[obj.size] * side / 2
    cx, cy = obj.x * side, obj.y * side
    x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
    w = 2 * half
    flip = -1 if obj.mirrored else 1

    def px(fraction: float) -> float:  # a horizontal position inside the box, mirrored for left-facing objects
        return cx + flip * (fraction - 0.5) * w

    if obj.kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif obj.kind == "square":
        inset = 0.1 * w
        draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=colour)
    elif obj.kind == "triangle":
        draw.polygon([(x0, y1 - 0.08 * w), (x1, y1 - 0.08 * w), (cx, y0 + 0.05 * w)], fill=colour)
    elif obj.kind == "star":
        points = []
        for i in range(10):
            radius = half if i % 2 == 0 else half * 0.42
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + 0.05 * w + radius * math.sin(angle)))
        draw.polygon(points, fill=colour)
    elif obj.kind == "house":
        draw.rectangle((x0 + 0.1 * w, cy - 0.05 * w, x1 - 0.1 * w, y1), fill=colour)
        draw.polygon([(x0, cy - 0.03 * w), (x1, cy - 0.03 * w), (cx, y0)], fill=dark)
        draw.rectangle((cx - 0.08 * w, cy + 0.2 * w, cx + 0.08 * w, y1), fill=dark)
    elif obj.kind == "tree":
        draw.rectangle((cx - 0.08 * w, cy + 0.1 * w, cx + 0.08 * w, y1), fill=dark)
        draw.ellipse((x0 + 0.08 * w, y0, x1 - 0.08 * w, cy + 0.22 * w), fill=colour)
    elif obj.kind == "car":
        draw.rectangle((x0, cy - 0.05 * w, x1, cy + 0.22 * w), fill=colour)
        draw.polygon(
            [(px(0.2), cy - 0.05 * w), (px(0.3), cy - 0.28 * w), (px(0.65), cy - 0.28 * w), (px(0.8), cy - 0.05 * w)],
            fill=colour,
        )
        for wheel in (0.22, 0.78):
            r = 0.11 * w
            draw.ellipse((px(wheel) - r, cy + 0.22 * w - r, px(wheel) + r, cy + 0.22 * w + r), fill=black)
    elif obj.kind == "person":
        r = 0.13 * w
        draw.ellipse((cx - r, y0, cx + r, y0 + 2 * r), fill=colour)
        body = max(1, round(0.1 * w))
        draw.line((cx, y0 + 2 * r, cx, cy + 0.15 * w), fill=colour, width=body)
        draw.line((cx - 0.3 * w, cy - 0.12 * w, cx + 0.3 * w, cy - 0.12 * w), fill=colour, width=body)
        draw.line((cx, cy + 0.15 * w, cx - 0.22 * w, y1), fill=colour, width=body)
        draw.line((cx, cy + 0.15 * w, cx + 0.22 * w, y1), fill=colour, width=body)
    elif obj.kind == "boat":
        draw.polygon([(x0, cy + 0.15 * w), (x1, cy + 0.15 * w), (px(0.8), y1), (px(0.2), y1)], fill=colour)
        draw.line((cx, y0, cx, cy + 0.15 * w), fill=dark, width=max(1, round(0.05 * w)))
        draw.polygon([(px(0.53), y0 + 0.03 * w), (px(0.53), cy + 0.1 * w), (px(0.9), cy + 0.1 * w)], fill=white)
    else:  # flower
        draw.line((cx, cy, cx, y1), fill=fill or (40, 130, 40), width=max(1, round(0.07 * w)))
        r = 0.14 * w
        for i in range(5):
            angle = -math.pi / 2 + i * 2 * math.pi / 5
            px_, py_ = cx + 0.22 * w * math.cos(angle), cy - 0.15 * w + 0.22 * w * math.sin(angle)
            draw.ellipse((px_ - r, py_ - r, px_ + r, py_ + r), fill=colour)
        r = 0.1 * w
        centre = fill or ((250, 220, 40) if obj.colour != "yellow" else (120, 70, 20))
        draw.ellipse((cx - r, cy - 0.15 * w - r, cx + r, cy - 0.15 * w + r), fill=centre)


def _background(scene: HardScene, side: int) -> Image.Image:
    if scene.background == "plain":
        return Image.new("RGB", (side, side), PLAIN_TONES[scene.tone])
    image = Image.new("RGB", (side, side))
    draw = ImageDraw.Draw(image)
    horizon = scene.horizon * side
    if scene.background == "outdoor":
        for y in range(math.ceil(horizon)):  # a sky that pales toward the horizon
            t = y / max(horizon, 1)
            draw.line((0, y, side, y), fill=(int(110 + 80 * t), int(160 + 60 * t), 235))
        draw.rectangle((0, horizon, side, side), fill=(105, 165, 80))
    else:
        draw.rectangle((0, 0, side, horizon), fill=(200, 185, 160))
        draw.rectangle((0, horizon, side, side), fill=(140, 100, 65))
        draw.rectangle((0.08 * side, 0.1 * side, 0.28 * side, 0.3 * side), fill=(170, 205, 235))
        draw.line((0.18 * side, 0.1 * side, 0.18 * side, 0.3 * side), fill=(90, 70, 50), width=max(1, side // 80))
    return image


def render_hard_scene(scene: HardScene, image_size: int = DEFAULT_HARD_IMAGE_SIZE) -> Image.Image:
    """
    Draws a `HardScene` as an RGB image of `image_size` × `image_size` pixels: background, the objects in order
    (drawn at twice the size and downsampled, so edges are smooth), then blur, noise and JPEG re-encoding.
    The picture is a pure function of the scene and the size.
    """
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small to draw the hard scenes; use at least 16 pixels.")
    side = 2 * image_size
    image = _background(scene, side)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, side)
    image = image.resize((image_size, image_size), Image.Resampling.BOX)
    if scene.blur:
        image = image.filter(ImageFilter.GaussianBlur(scene.blur * image_size / 160))
    if scene.noise:
        rng = np.random.default_rng(scene.seed)
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, scene.noise, (image_size, image_size, 1))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    if scene.jpeg_quality:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=scene.jpeg_quality)
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


def object_masks(scene: HardScene, side: int = _MASK_SIDE) -> list[np.ndarray]:
    """Each object's drawn pixels as a boolean (side, side) mask, before anything covers it."""
    masks = []
    for obj in scene.objects:
        canvas = Image.new("L", (side, side), 0)
        _draw_object(ImageDraw.Draw(canvas), obj, side, fill=255)
        masks.append(np.asarray(canvas) > 0)
    return masks


# ---------------------------------------------------------------------------------------------------------------
# Relations, read off the pixels
# ---------------------------------------------------------------------------------------------------------------


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def object_relations(scene: HardScene) -> list[tuple[int, str, int]]:
    """
    The spatial relations between the scene's objects, as (object index, relation, object index) triples, measured
    on the drawn pixels (`object_masks`): i is "in front of" j when i, drawn later, covers at least 8% of j's pixels
    (and j is "behind" i); "left of" / "right of" when their visible pixels' extents do not overlap horizontally,
    "above" / "below" likewise vertically; "next to" when they sit side by side with a gap under 12% of the image
    side and overlapping heights.
    """
    masks = object_masks(scene)
    visible = [mask.copy() for mask in masks]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            visible[i] &= ~masks[j]
    boxes = [_box(mask) if mask.any() else None for mask in visible]
    side = masks[0].shape[0]
    relations = []
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            if boxes[i] is None or boxes[j] is None:
                continue
            ax0, ay0, ax1, ay1 = boxes[i]
            bx0, by0, bx1, by1 = boxes[j]
            if (masks[i] & masks[j]).sum() >= 0.08 * masks[i].sum():  # j was drawn over i
                relations += [(j, "in front of", i), (i, "behind", j)]
            if ax1 < bx0:
                relations += [(i, "left of", j), (j, "right of", i)]
            elif bx1 < ax0:
                relations += [(j, "left of", i), (i, "right of", j)]
            if ay1 < by0:
                relations += [(i, "above", j), (j, "below", i)]
            elif by1 < ay0:
                relations += [(j, "above", i), (i, "below", j)]
            gap = max(bx0 - ax1, ax0 - bx1)
            if 0 < gap < 0.12 * side and min(ay1, by1) > max(ay0, by0):
                relations += [(i, "next to", j), (j, "next to", i)]
    return relations


def horizontal_place(scene: HardScene, index: int) -> str | None:
    """ "left" or "right" when the object lies wholly in that half of the image."""
    obj = scene.objects[index]
    half = OBJECT_SIZES[obj.size] / 2
    if obj.x + half <= 0.5:
        return "left"
    if obj.x - half >= 0.5:
        return "right"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------------------------


def _kinds_of_objects(total: int, rng: random.Random) -> list[str]:
    """The kind of each of `total` objects: one to three kinds, so that some kinds come several times."""
    kinds = rng.sample(KINDS, rng.choice([k for k in (1, 2, 3) if k <= total and (k > 1 or total <= 4)]))
    chosen = list(kinds) + [rng.choice(kinds) for _ in range(total - len(kinds))]
    rng.shuffle(chosen)
    return chosen


def _place(sizes: list[str], rng: random.Random, overlap: int | None) -> list[tuple[float, float]]:
    """Centres for objects of these sizes: apart from each other, except object `overlap`, which is put partly over
    an earlier one (so that something stands in front of something)."""
    for _ in range(100):
        points: list[tuple[float, float]] = []
        for index, size in enumerate(sizes):
            half = OBJECT_SIZES[size] / 2
            for _ in range(60):
                if index == overlap and points:
                    bx, by = rng.choice(points)
                    x = bx + rng.choice((-1, 1)) * rng.uniform(0.35, 0.6) * 2 * half
                    y = by + rng.uniform(-0.3, 0.3) * 2 * half
                    if not (0.02 + half <= x <= 0.98 - half and 0.02 + half <= y <= 0.98 - half):
                        continue
                    points.append((x, y))
                    break
                x, y = rng.uniform(0.02 + half, 0.98 - half), rng.uniform(0.02 + half, 0.98 - half)
                reach = [half + OBJECT_SIZES[sizes[k]] / 2 + 0.03 for k in range(len(points))]
                if all(abs(x - p[0]) >= r or abs(y - p[1]) >= r for p, r in zip(points, reach, strict=True)):
                    points.append((x, y))
                    break
        if len(points) == len(sizes):
            return [(round(x * _GRID) / _GRID, round(y * _GRID) / _GRID) for x, y in points]
    raise RuntimeError("could not place the objects")  # not reached with the sizes above


def random_hard_scene(rng: random.Random) -> HardScene:
    """A random `HardScene` drawn with `rng`."""
    while True:
        kinds = _kinds_of_objects(rng.randint(2, 5), rng)
        looks: dict[str, tuple[str, str]] = {}
        members = []
        for kind in kinds:
            # Objects of a kind often look alike ("two red cars"), and often do not.
            if kind in looks and rng.random() < 0.5:
                members.append((kind, *looks[kind]))
                continue
            look = (rng.choice(tuple(HARD_COLOURS)), rng.choice(tuple(OBJECT_SIZES)))
            looks.setdefault(kind, look)
            members.append((kind, *look))
        overlap = rng.randrange(1, len(members)) if rng.random() < 0.3 else None
        try:
            centres = _place([size for _, _, size in members], rng, overlap)
        except RuntimeError:
            continue
        objects = tuple(
            HardObject(kind, colour, size, x, y, mirrored=rng.random() < 0.5)
            for (kind, colour, size), (x, y) in zip(members, centres, strict=True)
        )
        background = rng.choice(BACKGROUNDS)
        return HardScene(
            objects=objects,
            background=background,
            tone=rng.choice(tuple(PLAIN_TONES)) if background == "plain" else "",
            horizon=round(rng.uniform(0.4, 0.6), 3),
            noise=rng.choice((0.0, 0.0, 6.0, 16.0)),
            blur=rng.choice((0.0, 0.0, 0.6, 1.4)),
            jpeg_quality=rng.choice((0, 0, 60, 30)),
            seed=rng.randrange(2**31),
        )


# ---------------------------------------------------------------------------------------------------------------
# Captions: five annotators, five styles
# ---------------------------------------------------------------------------------------------------------------

_NOUNS = {
    "circle": (("circle", "circles"), ("ball", "balls"), ("disc", "discs")),
    "square": (("square", "squares"), ("box", "boxes"), ("block", "blocks")),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"),),
    "house": (("house", "houses"), ("building", "buildings"), ("cottage", "cottages")),
    "tree": (("tree", "trees"),),
    "car": (("car", "cars"), ("vehicle", "vehicles"), ("automobile", "automobiles")),
    "person": (("person", "people"), ("stick figure", "stick figures"), ("figure", "figures")),
    "boat": (("boat", "boats"), ("sailboat", "sailboats"), ("sailing boat", "sailing boats")),
    "flower": (("flower", "flowers"),),
}
_COUNTS = {1: ("a", "one"), 2: ("two", "a pair of"), 3: ("three",), 4: ("four",), 5: ("five",)}
_SIZES = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_RELATIONS = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "next to": ("next to", "beside", "near"),
    "in front of": ("in front of", "partly covering"),
    "behind": ("behind", "partly hidden behind"),
}
_SETTINGS = {
    "outdoor": ("outside", "in a field", "on the grass", "under a blue sky", "outdoors"),
    "indoor": ("in a room", "indoors", "inside a room", "in a room with a window"),
    "plain": ("on a plain background", "on a {tone} background", "against a {tone} background"),
}
_SCENE_NOUNS = {
    "outdoor": ("an outdoor scene", "a sunny landscape", "a field"),
    "indoor": ("an indoor scene", "a room", "an interior"),
    "plain": ("a {tone} background", "a plain background", "a simple drawing"),
}
_TOTALS = {2: "two", 3: "three", 4: "four", 5: "five"}


def _pick(options: tuple, rng: random.Random):
    """Most annotators use the usual word (the first), some a synonym."""
    return options[0] if len(options) == 1 or rng.random() < 0.7 else rng.choice(options[1:])


def _noun(kind: str, plural: bool, rng: random.Random) -> str:
    singular, plurals = _pick(_NOUNS[kind], rng)
    return plurals if plural else singular


def _a(phrase: str) -> str:
    """ "a" before a vowel sound, as people write it."""
    return "an " + phrase[2:] if phrase.startswith("a ") and phrase[2] in "aeiou" else phrase


def _describe(obj: HardObject, rng: random.Random, colour: bool = True, size: bool = True) -> str:
    """One object: "a small red car", "one big tree"."""
    words = [_pick(_COUNTS[1], rng)]
    if size:
        words.append(_pick(_SIZES[obj.size], rng))
    if colour:
        words.append(obj.colour)
    words.append(_noun(obj.kind, False, rng))
    return _a(" ".join(words))


def _count_kind(members: list[HardObject], rng: random.Random, colour: bool) -> str:
    """The objects of one kind: "two red cars" when they share the colour, "two cars" when not."""
    if len(members) == 1:
        return _describe(members[0], rng, colour=colour, size=False)
    shared = len({o.colour for o in members}) == 1
    words = [_pick(_COUNTS[len(members)], rng)]
    if colour and shared:
        words.append(members[0].colour)
    words.append(_noun(members[0].kind, True, rng))
    return " ".join(words)


def _kinds_by_count(scene: HardScene) -> list[list[HardObject]]:
    """Objects grouped by kind, the most numerous kind first, as an annotator names them."""
    return sorted(scene.by_kind().values(), key=len, reverse=True)


def _listing(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _setting(scene: HardScene, rng: random.Random, table: dict) -> str:
    return _pick(table[scene.background], rng).format(tone=scene.tone)


def _terse(scene: HardScene, relations, rng: random.Random) -> str:
    # What is there and how many, and little else: "two cars and a tree".
    return _listing([_count_kind(group, rng, colour=rng.random() < 0.5) for group in _kinds_by_count(scene)[:2]])


def _enumeration(scene: HardScene, relations, rng: random.Random) -> str:
    # The total, then every object from left to right with its size and colour:
    # "there are three things : a small red car , a big blue car and a green tree".
    total = _TOTALS[len(scene.objects)]
    noun = _pick(("objects", "things", "items"), rng)
    head = rng.choice((f"there are {total} {noun}", f"{total} {noun} in the picture", f"{total} {noun}"))
    ordered = sorted(scene.objects, key=lambda o: o.x)
    return f"{head} : " + _listing([_describe(o, rng, size=rng.random() < 0.7) for o in ordered])


def _relational(scene: HardScene, relations, rng: random.Random) -> str:
    # One relation between two objects that look different, and where: "a red car in front of a big house in a field".
    objects = scene.objects
    told_apart = [
        (i, r, j)
        for i, r, j in relations
        if (objects[i].kind, objects[i].colour) != (objects[j].kind, objects[j].colour)
    ]
    if told_apart:
        i, relation, j = rng.choice(told_apart)
        text = (
            f"{_describe(objects[i], rng, size=rng.random() < 0.5)} {_pick(_RELATIONS[relation], rng)} "
            f"{_describe(objects[j], rng, colour=rng.random() < 0.8, size=False)}"
        )
    else:
        index = max(range(len(objects)), key=lambda k: objects[k].size == "large")
        text = _describe(objects[index], rng, size=rng.random() < 0.5)
        place = horizontal_place(scene, index)
        if place:
            text += f" on the {place}"
    return f"{text} {_setting(scene, rng, _SETTINGS)}"


def _colours(scene: HardScene, relations, rng: random.Random) -> str:
    # Every kind with its colours: "two red cars and a big green tree", "a red car , a blue car and a tree".
    parts = []
    for group in _kinds_by_count(scene):
        if len({o.colour for o in group}) == 1:
            parts.append(_count_kind(group, rng, colour=True))
        else:
            parts += [_describe(o, rng, size=False) for o in group]
    return _listing(parts)


def _scene_first(scene: HardScene, relations, rng: random.Random) -> str:
    # The picture as a whole first: "a blurry photo of a room with two people and a yellow star".
    degraded = [word for word, present in scene.degraded.items() if present]
    if degraded:
        head = f"a {rng.choice(degraded)} {rng.choice(('photo', 'picture', 'image'))} of "
    else:
        head = rng.choice(("a picture of ", ""))
    parts = _listing([_count_kind(group, rng, colour=rng.random() < 0.7) for group in _kinds_by_count(scene)[:2]])
    return f"{head}{_setting(scene, rng, _SCENE_NOUNS)} with {parts}"


_STYLES = (_terse, _enumeration, _relational, _colours, _scene_first)


def hard_scene_captions(scene: HardScene, rng: random.Random, count: int = 5) -> list[str]:
    """
    `count` captions of one scene (lower case, no final period), one per annotator style: terse (the main kinds
    and their counts), enumeration (the total, then every object left to right with its size and colour),
    relational (a relation measured on the pixels, and the setting), colours (every kind with its colours),
    scene-first (the setting and any visible degradation first). Every
    statement is true of the drawn image; annotators differ in what they mention and the words they use.
    """
    if not 1 <= count <= len(_STYLES):
        raise ValueError(f"count={count}: hard_scene_captions writes between 1 and {len(_STYLES)} captions.")
    relations = object_relations(scene)
    captions: list[str] = []
    for style in rng.sample(_STYLES, count):
        caption = style(scene, relations, rng)
        for _ in range(20):  # two annotators rarely write the very same words
            if caption not in captions:
                break
            caption = style(scene, relations, rng)
        captions.append(caption)
    return captions


def hard_vocabulary() -> list[str]:
    """Every word a `hard` caption can use, sorted."""
    words = set(HARD_COLOURS) | set(" ".join(PLAIN_TONES).split())
    for table in (_COUNTS, _SIZES, _RELATIONS, _SETTINGS, _SCENE_NOUNS):
        for phrases in table.values():
            for phrase in phrases:
                words.update(phrase.replace("{tone}", "").split())
    for nouns in _NOUNS.values():
        for pair in nouns:
            words.update(" ".join(pair).split())
    words.update(
        [
            "an",
            "and",
            "there",
            "are",
            "objects",
            "things",
            "items",
            "in",
            "the",
            "picture",
            "total",
            ":",
            ",",
            "with",
            "of",
            "photo",
            "image",
            "blurry",
            "grainy",
            "on",
            "left",
            "right",
        ]
    )
    return sorted(words)


def build_hard_synthetic_splits(
    seed: int = 0, sizes: dict[str, int] | tuple[int, int, int] | None = None, captions_per_image: int = 5
) -> dict[str, list[SyntheticExample]]:
    """
    Builds the `hard` synthetic set's specs and captions, with the same splits API as `build_synthetic_splits`:
    keys "train", "validation", "test" (default 3000/250/250 images), each a list of `SyntheticExample` whose
    `scene` is a `HardScene` (drawn by `render_scene` / `render_hard_scene` on demand). Everything is a function of
    the seed; the test split is drawn first and the training split last, so test and validation do not change when
    only the training size changes.
    """
    resolved = split_sizes(sizes)
    splits: dict[str, list[SyntheticExample]] = {}
    for split in ("test", "validation", "train"):
        rng = random.Random(f"captioner-synthetic-hard:{seed}:{split}")
        examples = []
        for index in range(resolved[split]):
            scene = random_hard_scene(rng)
            captions = tuple(hard_scene_captions(scene, rng, captions_per_image))
            examples.append(SyntheticExample(f"synthetic-hard-{split}-{index:05d}", scene, captions))
        splits[split] = examples
    return {split: splits[split] for split in ("train", "validation", "test")}


__all__ = [
    "BACKGROUNDS",
    "DEFAULT_HARD_IMAGE_SIZE",
    "HARD_COLOURS",
    "KINDS",
    "HardObject",
    "HardScene",
    "build_hard_synthetic_splits",
    "hard_scene_captions",
    "hard_vocabulary",
    "object_masks",
    "object_relations",
    "random_hard_scene",
    "render_hard_scene",
]
