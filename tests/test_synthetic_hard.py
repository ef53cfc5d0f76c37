"""The hard synthetic set: deterministic splits, captions true to the drawn scenes, relations that hold on the pixels,
and references that agree with each other about as well as human ones do."""

import random
import re

import numpy as np
import pytest

from captioning.data import load_caption_splits
from captioning.data.synthetic_hard import (
    _NOUNS,
    HARD_COLOURS,
    KINDS,
    HardObject,
    HardScene,
    build_hard_synthetic_splits,
    hard_scene_captions,
    hard_vocabulary,
    object_masks,
    object_relations,
    random_hard_scene,
    render_hard_scene,
)
from captioning.evaluation.metrics import human_agreement

NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "pair": 2}
NOUN_KINDS = {noun: kind for kind, pairs in _NOUNS.items() for pair in pairs for noun in pair}


@pytest.fixture(scope="module")
def splits():
    return build_hard_synthetic_splits(seed=0, sizes=(120, 40, 40))


def test_splits_are_deterministic_disjoint_and_shaped_like_the_easy_set(splits):
    again = build_hard_synthetic_splits(seed=0, sizes=(120, 40, 40))
    assert list(splits) == ["train", "validation", "test"]
    assert [len(splits[s]) for s in splits] == [120, 40, 40]
    assert all(a == b for split in splits for a, b in zip(splits[split], again[split], strict=True))
    other = build_hard_synthetic_splits(seed=1, sizes=(120, 40, 40))
    assert splits["test"][0].scene != other["test"][0].scene
    scenes = [e.scene for split in splits.values() for e in split]
    assert len(set(scenes)) == len(scenes)
    ids = [e.image_id for split in splits.values() for e in split]
    assert len(set(ids)) == len(ids) and ids[0] == "synthetic-hard-train-00000"
    # Test and validation do not move when only the training size changes.
    bigger = build_hard_synthetic_splits(seed=0, sizes=(200, 40, 40))
    assert bigger["test"] == splits["test"] and bigger["validation"] == splits["validation"]


def test_scenes_cover_the_promised_variety(splits):
    scenes = [e.scene for e in splits["train"]]
    assert {len(s.objects) for s in scenes} == {2, 3, 4, 5}
    assert {o.kind for s in scenes for o in s.objects} == set(KINDS)
    assert {s.background for s in scenes} == {"outdoor", "indoor", "plain"}
    assert any(s.noise for s in scenes) and any(s.blur for s in scenes) and any(s.jpeg_quality for s in scenes)
    relations = {r for s in scenes for _, r, _ in object_relations(s)}
    assert relations == {"left of", "right of", "above", "below", "next to", "in front of", "behind"}
    counts = {max(len(g) for g in s.by_kind().values()) for s in scenes}
    assert {2, 3, 4} <= counts  # kinds that come several times, for captions to count


def _words(caption: str) -> list[str]:
    return re.findall(r"[a-z]+", caption)


def test_every_caption_is_true_to_its_scene(splits):
    """Colours, kinds, numbers and the total that captions state, checked against the scene's specification."""
    for example in splits["train"] + splits["test"]:
        scene = example.scene
        colours = {o.colour for o in scene.objects}
        kinds = {o.kind for o in scene.objects}
        counts = {len(g) for g in scene.by_kind().values()}
        for caption in example.captions:
            assert caption == caption.strip().lower(), caption
            # Colours of the setting ("a light blue background", "under a blue sky") are not objects' colours.
            setting = caption.replace(f"{scene.tone} background", "background").replace("blue sky", "sky")
            words = _words(setting)
            for word in words:
                if word in HARD_COLOURS:
                    assert word in colours, (caption, scene)
            text = f" {' '.join(words)} "
            named = {kind for noun, kind in NOUN_KINDS.items() if f" {noun} " in text}
            assert named and named <= kinds, (caption, scene)
            total = re.match(r"(?:there are )?(two|three|four|five) (?:objects|things|items)", caption)
            for word in words:
                if word in NUMBERS and not (total and word == total.group(1)):
                    assert NUMBERS[word] in counts, (caption, scene)
            if total:
                assert NUMBERS[total.group(1)] == len(scene.objects), (caption, scene)
                listed = caption.split(" : ", 1)[1]
                assert listed.count(",") + listed.count(" and ") + 1 == len(scene.objects), caption


def test_enumerations_go_left_to_right(splits):
    for example in splits["train"]:
        for caption in example.captions:
            if " : " not in caption:
                continue
            listed = re.split(r", | and ", caption.split(" : ", 1)[1])
            ordered = sorted(example.scene.objects, key=lambda o: o.x)
            for phrase, obj in zip(listed, ordered, strict=True):
                assert obj.colour in phrase.split() and NOUN_KINDS[phrase.split()[-1]] == obj.kind, (caption, phrase)


def test_relations_hold_on_the_geometry():
    """Relations are read off masks; here they are checked against the objects' centres and drawing order."""
    rng = random.Random(7)
    seen = 0
    for _ in range(60):
        scene = random_hard_scene(rng)
        masks = object_masks(scene)
        for i, relation, j in object_relations(scene):
            a, b = scene.objects[i], scene.objects[j]
            seen += 1
            if relation == "left of":
                assert a.x < b.x
            elif relation == "right of":
                assert a.x > b.x
            elif relation == "above":
                assert a.y < b.y
            elif relation == "below":
                assert a.y > b.y
            elif relation == "in front of":
                assert i > j and (masks[i] & masks[j]).any()  # drawn later, over the other's pixels
            elif relation == "behind":
                assert i < j
            else:
                assert relation == "next to" and abs(a.x - b.x) > abs(a.y - b.y) / 2
    assert seen > 100


def test_a_relation_caption_states_a_measured_relation():
    left = HardObject("car", "red", "small", 0.2, 0.5)
    right = HardObject("tree", "green", "large", 0.8, 0.5)
    scene = HardScene(objects=(left, right), background="plain", tone="grey")
    relations = object_relations(scene)
    assert (0, "left of", 1) in relations and (1, "right of", 0) in relations
    assert not any(r in ("above", "below", "in front of", "next to") for _, r, _ in relations)
    covering = HardScene(objects=(right, HardObject("car", "red", "small", 0.72, 0.55)), background="outdoor")
    assert (1, "in front of", 0) in object_relations(covering)


def test_rendering_is_deterministic_and_degraded():
    rng = random.Random(3)
    scene = random_hard_scene(rng)
    image = render_hard_scene(scene, 96)
    assert image.size == (96, 96) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(render_hard_scene(scene, 96)))
    clean = HardScene(objects=scene.objects, background=scene.background, tone=scene.tone, horizon=scene.horizon)
    noisy = HardScene(**{**clean.__dict__, "noise": 16.0, "blur": 1.4, "jpeg_quality": 30, "seed": 1})
    difference = np.abs(np.asarray(render_hard_scene(noisy), float) - np.asarray(render_hard_scene(clean), float))
    assert difference.mean() > 3
    with pytest.raises(ValueError, match="too small"):
        render_hard_scene(scene, 8)


def test_bad_scenes_are_refused():
    car = HardObject("car", "red", "small", 0.3, 0.3)
    with pytest.raises(ValueError, match="between 2 and 5"):
        HardScene(objects=(car,), background="plain", tone="grey")
    with pytest.raises(ValueError, match="background"):
        HardScene(objects=(car, car), background="space")
    with pytest.raises(ValueError, match="tone"):
        HardScene(objects=(car, car), background="plain", tone="pink")
    with pytest.raises(ValueError, match="kind"):
        HardObject("dragon", "red", "small", 0.3, 0.3)
    with pytest.raises(ValueError, match="between 1 and 5"):
        hard_scene_captions(HardScene(objects=(car, car), background="indoor"), random.Random(0), count=6)


def test_references_agree_like_human_ones_and_vary_in_length():
    """The five annotator styles agree at a CIDEr-D a real dataset's references reach (0.8–1.5), and differ in
    length; every word is in the set's vocabulary."""
    examples = build_hard_synthetic_splits(seed=0, sizes=(1, 1, 200))["test"]
    references = [list(e.captions) for e in examples]
    agreement = human_agreement(references, meteor=False)
    assert 0.8 <= agreement["CIDEr-D"] <= 1.5
    lengths = [len(c.split()) for refs in references for c in refs]
    assert 10 <= np.mean(lengths) <= 14 and min(lengths) <= 4 and max(lengths) >= 20
    assert sum(len(set(refs)) == 5 for refs in references) >= 0.98 * len(references)  # as rare as in real data
    vocabulary = set(hard_vocabulary())
    assert {w for refs in references for c in refs for w in _words(c)} <= vocabulary


def test_loaded_through_the_dataset_api():
    splits = load_caption_splits("synthetic", variant="hard", sizes=(6, 2, 2))
    item = splits["train"][0]
    assert item["image"].size == (160, 160) and len(item["captions"]) == 5
    assert splits["train"].name == "synthetic-hard" and "hard" in splits["train"].source
    small = load_caption_splits("synthetic", variant="hard", sizes=(6, 2, 2), image_size=64)
    assert small["train"][0]["image"].size == (64, 64)
    assert small["train"].fingerprint() != splits["train"].fingerprint()
    with pytest.raises(ValueError, match="variant"):
        load_caption_splits("synthetic", variant="medium")
    with pytest.raises(ValueError, match=">= 16"):
        load_caption_splits("synthetic", variant="hard", image_size=8)
