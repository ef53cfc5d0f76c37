"""Caption datasets: the synthetic scenes (deterministic, disjoint splits, varied captions) and every file format
(Flickr8k both layouts, Karpathy, COCO, 🤗 datasets) with missing, corrupt and truncated images and empty captions
skipped and counted, and clear errors for missing files and unusable splits."""

import io
import json

import datasets
import numpy as np
import pytest
from dataset_files import (
    good_names,
    make_coco,
    make_kaggle_flickr8k,
    make_original_flickr8k,
    write_corrupt,
    write_image,
)
from PIL import Image

from captioning.data import (
    CaptionDataset,
    CaptionPairs,
    CaptionRecord,
    SkipCounts,
    deterministic_split,
    load_caption_splits,
)
from captioning.data.synthetic import (
    SCENE_COLOURS,
    Scene,
    ShapesScene,
    build_synthetic_splits,
    render_scene,
    synthetic_vocabulary,
)

SMALL = {"train": 60, "validation": 20, "test": 20}


# ---------------------------------------------------------------------------------------------------------------
# Fixture files
# ---------------------------------------------------------------------------------------------------------------


def total_skips(splits: dict[str, CaptionDataset]) -> dict[str, int]:
    merged = SkipCounts()
    for dataset in splits.values():
        merged = merged + dataset.skipped
    return merged.as_dict()


# ---------------------------------------------------------------------------------------------------------------
# Synthetic
# ---------------------------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_for_a_seed_and_differs_across_seeds():
    first, again, other = (
        build_synthetic_splits(0, SMALL),
        build_synthetic_splits(0, SMALL),
        build_synthetic_splits(1, SMALL),
    )
    assert first == again
    assert [e.scene for e in first["train"]] != [e.scene for e in other["train"]]
    assert [e.captions for e in first["test"]] != [e.captions for e in other["test"]]
    a, b = load_caption_splits("synthetic", sizes=SMALL), load_caption_splits("synthetic", sizes=SMALL)
    for i in (0, 7, 59):
        assert np.array_equal(np.asarray(a["train"][i]["image"]), np.asarray(b["train"][i]["image"]))
        assert a["train"][i]["captions"] == b["train"][i]["captions"]


def test_synthetic_splits_are_disjoint_and_sized():
    splits = build_synthetic_splits(3, {"train": 500, "validation": 40, "test": 30})
    assert {name: len(examples) for name, examples in splits.items()} == {"train": 500, "validation": 40, "test": 30}
    scenes = {name: {e.scene for e in examples} for name, examples in splits.items()}
    assert sum(len(s) for s in scenes.values()) == 570  # no scene twice, within or across splits
    assert not scenes["train"] & scenes["validation"] and not scenes["train"] & scenes["test"]
    assert not scenes["validation"] & scenes["test"]
    # Evaluation splits do not move when only the training size changes.
    assert build_synthetic_splits(3, {"train": 10, "validation": 40, "test": 30})["test"] == splits["test"]
    loaded = load_caption_splits("synthetic", sizes=(12, 3, 4), image_size=40)
    assert [len(loaded[s]) for s in ("train", "validation", "test")] == [12, 3, 4]
    assert loaded["test"][0]["image"].size == (40, 40) and loaded["test"][0]["image"].mode == "RGB"
    defaults = build_synthetic_splits(0)
    assert [len(defaults[s]) for s in ("train", "validation", "test")] == [3000, 250, 250]


def test_synthetic_captions_are_five_varied_descriptions_of_the_content():
    examples = build_synthetic_splits(0, SMALL)["train"]
    count_words = {1: ("a ", "one "), 2: ("two", "pair"), 3: ("three",)}
    region_words = {
        "left": ("left",),
        "right": ("right",),
        "top": ("top", "upper"),
        "bottom": ("bottom", "lower"),
        "centre": ("middle", "center"),
    }
    overlaps = []
    for example in examples:
        scene, captions = example.scene, example.captions
        assert len(captions) == 5 and len(set(captions)) == 5
        for caption in captions:
            assert caption == caption.strip().lower() and "  " not in caption
            assert scene.colour in caption
            assert any(word in caption for word in count_words[scene.count]), caption
            assert any(word in caption for word in region_words[scene.region]), caption
        words = [set(caption.split()) for caption in captions]
        overlaps += [len(a & b) / len(a | b) for i, a in enumerate(words) for b in words[i + 1 :]]
    # Human-agreement-like: references share most content words but far from all of their wording.
    assert 0.3 < float(np.mean(overlaps)) < 0.8
    vocabulary = synthetic_vocabulary()
    used = {word for example in examples for caption in example.captions for word in caption.split()}
    assert used <= set(vocabulary) and 30 <= len(vocabulary) <= 80


def test_synthetic_images_show_the_shapes_where_the_captions_say():
    examples = build_synthetic_splits(5, SMALL)["train"]
    for example in examples[:40]:
        scene = example.scene
        pixels = np.asarray(render_scene(scene, 64)).astype(int)
        target = np.array(SCENE_COLOURS[scene.colour])
        ys, xs = np.nonzero(np.abs(pixels - target).sum(-1) < 30)
        assert len(xs) > 0, scene
        x, y = xs.mean() / 64, ys.mean() / 64
        expected = {
            "left": x < 0.45,
            "right": x > 0.55,
            "top": y < 0.45,
            "bottom": y > 0.55,
            "centre": 0.35 < x < 0.65 and 0.35 < y < 0.65,
        }
        assert expected[scene.region], (scene, x, y)

    def area(scene: ShapesScene) -> int:
        pixels = np.asarray(render_scene(scene, 64)).astype(int)
        return int((np.abs(pixels - np.array(SCENE_COLOURS[scene.colour])).sum(-1) < 30).sum())

    for shape in ("circle", "square", "triangle", "diamond"):
        small, large = (ShapesScene(shape, "blue", 1, size, "centre") for size in ("small", "large"))
        assert area(large) > 2 * area(small) > 0, shape


def test_the_demo_scene_api_still_works():
    scene = Scene("red", "circle", "left")
    assert scene.caption == "a red circle on the left"
    assert render_scene(scene, 64).size == (64, 64)
    with pytest.raises(ValueError, match="region='middle'"):
        ShapesScene("circle", "red", 1, "small", "middle")


# ---------------------------------------------------------------------------------------------------------------
# Flickr8k
# ---------------------------------------------------------------------------------------------------------------


def test_flickr8k_kaggle_layout_skips_and_counts_bad_entries(tmp_path):
    root = make_kaggle_flickr8k(tmp_path / "flickr8k")
    splits = load_caption_splits("flickr8k", data_dir=root, seed=0)
    assert set(splits) == {"train", "validation", "test"}
    assert sum(len(d) for d in splits.values()) == 20
    assert total_skips(splits) == {
        "missing_image": 1,
        "unreadable_image": 2,  # random bytes and a truncated PNG
        "empty_caption": 3,
        "image_without_captions": 1,
        "failed_to_load": 0,
    }
    ids = [{record.image_id for record in d.records} for d in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    record = next(r for d in splits.values() for r in d.records if r.image_id == good_names(20)[3])
    assert record.captions == ["A dog number 3 runs .", "A dog, number 3, plays ."]
    # Deterministic by seed: same seed, same split; other seeds move images between splits.
    again = load_caption_splits("flickr8k", data_dir=root, seed=0)
    assert [r.image_id for r in again["test"].records] == [r.image_id for r in splits["test"].records]
    tests = {
        tuple(r.image_id for r in load_caption_splits("flickr8k", data_dir=root, seed=s)["test"].records)
        for s in range(4)
    }
    assert len(tests) > 1
    item = splits["train"][0]
    assert item["image"].mode == "RGB" and item["image_id"] == splits["train"].records[0].image_id
    assert item["index"] == 0 and len(item["captions"]) >= 1
    merged = splits["train"].skipped + splits["validation"].skipped + splits["test"].skipped
    assert "1 missing_image (e.g. missing.jpg)" in merged.report()


def test_flickr8k_original_layout_uses_the_official_splits(tmp_path):
    root = make_original_flickr8k(tmp_path / "Flickr8k")
    splits = load_caption_splits("flickr8k", data_dir=root)
    names = good_names(8)
    assert [r.image_id for r in splits["train"].records] == [*names[:5], "late.jpg"]
    assert [r.image_id for r in splits["validation"].records] == [names[5]]
    assert [r.image_id for r in splits["test"].records] == names[6:]
    assert splits["validation"].skipped.missing_image == 1 and splits["test"].skipped.unreadable_image == 1
    assert splits["train"].skipped.empty_caption == 1 and len(splits["train"][0]["captions"]) == 5
    # The truncated JPEG passes the cheap verify() and fails when decoded: a None item, counted.
    train = splits["train"]
    assert train[5] is None and train.skipped.failed_to_load == 1
    assert "failed_to_load" in train.skipped.report() and "late.jpg" in train.skipped.report()
    # verify_images="decode" catches it when the split is built.
    decoded = load_caption_splits("flickr8k", data_dir=root, verify_images="decode")
    assert len(decoded["train"]) == 5 and decoded["train"].skipped.unreadable_image == 1


def test_a_split_with_nothing_usable_is_an_error_before_training(tmp_path):
    root = make_original_flickr8k(tmp_path / "Flickr8k")
    (root / "Flickr_8k.testImages.txt").write_text("corrupt.jpg\nmissing.jpg\n", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        load_caption_splits("flickr8k", data_dir=root)
    message = str(error.value)
    for expected in ("flickr8k", str(root), "test split", "1 missing_image", "1 unreadable_image"):
        assert expected in message, message


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*captions\.txt"):
        load_caption_splits("flickr8k", data_dir=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"Flickr8k\.token\.txt"):
        load_caption_splits("flickr8k", data_dir=tmp_path / "empty")
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    (kaggle / "captions.txt").write_text("image,caption\na.jpg,A dog .\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="Images"):
        load_caption_splits("flickr8k", data_dir=kaggle)
    with pytest.raises(FileNotFoundError, match=r"dataset_\*\.json"):
        load_caption_splits("karpathy", data_dir=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"captions_train2014\.json"):
        load_caption_splits("coco", data_dir=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="save_to_disk"):
        load_caption_splits("hf", data_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs data_dir"):
        load_caption_splits("coco")
    with pytest.raises(ValueError, match="Unknown dataset_format 'flickr'"):
        load_caption_splits("flickr", data_dir=kaggle)
    with pytest.raises(TypeError, match="year"):
        load_caption_splits("flickr8k", data_dir=kaggle, year=2014)


def test_kaggle_header_is_checked(tmp_path):
    (tmp_path / "Images").mkdir()
    (tmp_path / "captions.txt").write_text("a.jpg,A dog runs .\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"captions\.txt should start with the header 'image,caption'"):
        load_caption_splits("flickr8k", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Karpathy and COCO
# ---------------------------------------------------------------------------------------------------------------


def karpathy_entry(filename: str, split: str, captions: list[str], filepath: str | None = None) -> dict:
    entry = {"filename": filename, "split": split, "sentences": [{"raw": c, "tokens": c.split()} for c in captions]}
    if filepath is not None:
        entry["filepath"] = filepath
    return entry


def test_karpathy_flickr_file_with_restval_and_bad_entries(tmp_path):
    names = good_names(6)
    for i, name in enumerate(names):
        write_image(tmp_path / "Flicker8k_Dataset" / name, seed=i)
    write_corrupt(tmp_path / "Flicker8k_Dataset" / "corrupt.jpg")
    images = [
        karpathy_entry(names[0], "train", ["A dog runs .", "A dog plays ."]),
        karpathy_entry(names[1], "restval", ["A cat sits .", ""]),
        karpathy_entry("missing.jpg", "train", ["A bird ."]),
        karpathy_entry("corrupt.jpg", "train", ["A fish ."]),
        karpathy_entry(names[2], "val", ["A man walks ."]),
        karpathy_entry(names[3], "val", []),
        karpathy_entry(names[4], "test", ["A girl jumps ."]),
        karpathy_entry(names[5], "test", ["Two boys swim ."]),
    ]
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": images}), encoding="utf-8")
    splits = load_caption_splits("karpathy", data_dir=tmp_path)
    assert [r.image_id for r in splits["train"].records] == names[:2]  # restval counts as train
    assert splits["train"].records[1].captions == ["A cat sits ."]
    assert splits["train"].skipped.as_dict() == {
        "missing_image": 1,
        "unreadable_image": 1,
        "empty_caption": 1,
        "image_without_captions": 0,
        "failed_to_load": 0,
    }
    assert splits["validation"].skipped.image_without_captions == 1 and len(splits["test"]) == 2
    # A configurable images root: the same file with the images elsewhere.
    (tmp_path / "Flicker8k_Dataset").rename(tmp_path / "pictures")
    moved = load_caption_splits("karpathy", data_dir=tmp_path, images_dir="pictures")
    assert [len(moved[s]) for s in ("train", "validation", "test")] == [2, 1, 2]
    with pytest.raises(FileNotFoundError, match="images_dir"):
        load_caption_splits("karpathy", data_dir=tmp_path)


def test_karpathy_coco_file_uses_filepath(tmp_path):
    for split in ("train2014", "val2014"):
        for i in range(3):
            write_image(tmp_path / split / f"COCO_{split}_{i:012d}.jpg", seed=i)
    images = [karpathy_entry(f"COCO_train2014_{i:012d}.jpg", "train", [f"A bus {i} ."], "train2014") for i in range(3)]
    images += [karpathy_entry("COCO_val2014_000000000000.jpg", "restval", ["A tree ."], "val2014")]
    images += [karpathy_entry("COCO_val2014_000000000001.jpg", "val", ["A car ."], "val2014")]
    images += [karpathy_entry("COCO_val2014_000000000002.jpg", "test", ["A cup ."], "val2014")]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images}), encoding="utf-8")
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="dataset_name"):
        load_caption_splits("karpathy", data_dir=tmp_path)
    splits = load_caption_splits("karpathy", data_dir=tmp_path, dataset_name="coco")
    assert len(splits["train"]) == 4 and splits["test"].records[0].image_id == "val2014/COCO_val2014_000000000002.jpg"
    assert splits["test"][0]["captions"] == ["A cup ."]


@pytest.mark.parametrize("year", ["2014", "2017"])
def test_coco_halves_val_into_validation_and_test(tmp_path, year):
    root = make_coco(tmp_path, year)
    splits = load_caption_splits("coco", data_dir=root, seed=0)
    assert len(splits["train"]) == 5 and len(splits["train"][0]["captions"]) == 5
    assert splits["train"].skipped.unreadable_image == 1 and splits["train"].skipped.image_without_captions == 1
    validation = {r.image_id for r in splits["validation"].records}
    test = {r.image_id for r in splits["test"].records}
    assert len(validation) == len(test) == 3 and not validation & test
    assert validation | test == {f"COCO_val{year}_{i:012d}.jpg" for i in range(6)}
    halves = {
        tuple(sorted(r.image_id for r in load_caption_splits("coco", data_dir=root, seed=s)["test"].records))
        for s in range(5)
    }
    assert len(halves) > 1


# ---------------------------------------------------------------------------------------------------------------
# 🤗 datasets
# ---------------------------------------------------------------------------------------------------------------


def test_hf_imagefolder_with_metadata_jsonl(tmp_path):
    folder = tmp_path / "folder"
    rows = []
    for i in range(10):
        write_image(folder / f"img{i}.png", seed=i)
        rows.append({"file_name": f"img{i}.png", "caption": [f"A red thing {i} .", f"Something {i} ."]})
    write_corrupt(folder / "bad.jpg")
    write_image(folder / "blank.png", seed=50)
    rows += [{"file_name": "bad.jpg", "caption": ["Broken ."]}, {"file_name": "blank.png", "caption": [" ", ""]}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    splits = load_caption_splits("hf", data_dir=folder, seed=0, cache_dir=str(tmp_path / "cache"))
    assert sum(len(d) for d in splits.values()) == 10  # validation and test carved out of the lone train split
    assert min(len(d) for d in splits.values()) >= 1
    assert total_skips(splits)["unreadable_image"] == 1 and total_skips(splits)["empty_caption"] == 2
    assert total_skips(splits)["image_without_captions"] == 1
    item = splits["train"][0]
    assert item["image"].mode == "RGB" and item["image"].size == (16, 12) and len(item["captions"]) == 2
    assert item["image_id"].startswith("img")


def test_hf_save_to_disk_with_embedded_bytes_and_val_alias(tmp_path):
    def png_bytes(seed: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.full((6, 9, 3), seed * 20, dtype=np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    def part(count: int, offset: int, bad: bool = False) -> datasets.Dataset:
        images = [{"bytes": png_bytes(offset + i), "path": None} for i in range(count)]
        texts = [f"Caption {offset + i} ." for i in range(count)]
        if bad:
            images.append({"bytes": b"not an image at all", "path": None})
            texts.append("Broken .")
        return datasets.Dataset.from_dict({"picture": images, "text": texts}).cast_column("picture", datasets.Image())

    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": part(6, 0, bad=True), "val": part(2, 10)}).save_to_disk(str(folder))
    splits = load_caption_splits("hf", data_dir=folder, image_column="picture", caption_column="text", seed=1)
    assert len(splits["validation"]) == 2 and splits["validation"][1]["captions"] == ["Caption 11 ."]
    assert len(splits["train"]) + len(splits["test"]) == 6 and len(splits["test"]) >= 1
    assert splits["train"].skipped.unreadable_image + splits["test"].skipped.unreadable_image == 1
    assert len({r.image_id for d in splits.values() for r in d.records}) == 8
    assert splits["validation"][0]["image"].size == (9, 6)
    with pytest.raises(ValueError, match=r"no column 'caption'.*\['picture', 'text'\]"):
        load_caption_splits("hf", data_dir=folder, image_column="picture")


def test_hf_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # The libraries read the variable at import: set what they read, whatever the environment said then.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match=r"'someone/flickr-captions-xyz'.*HF_HUB_OFFLINE"):
        load_caption_splits("hf", dataset_name="someone/flickr-captions-xyz", cache_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# Datasets, pairs, helpers
# ---------------------------------------------------------------------------------------------------------------


def test_items_apply_exif_and_failures_become_counted_nones(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when displayed
    rotated = tmp_path / "rotated.jpg"
    Image.new("RGB", (16, 8), "red").save(rotated, exif=exif)
    vanished = write_image(tmp_path / "vanished.png")
    dataset = CaptionDataset(
        [CaptionRecord("rotated", str(rotated), ["A red box ."]), CaptionRecord("gone", str(vanished), ["Gone ."])],
        name="test",
    )
    assert dataset[0]["image"].size == (8, 16)
    vanished.unlink()  # a file that disappears after the split was built
    assert dataset[1] is None and dataset.skipped.failed_to_load == 1
    assert CaptionPairs(dataset)[1] is None


def test_caption_pairs_give_every_image_caption_pair():
    splits = load_caption_splits("synthetic", sizes={"train": 4, "validation": 1, "test": 1})
    pairs = CaptionPairs(splits["train"])
    assert len(pairs) == 20
    items = [pairs[k] for k in range(len(pairs))]
    assert [item["caption"] for item in items] == splits["train"].all_captions()
    assert items[7]["index"] == 1 and items[7]["caption_index"] == 2 and len(items[7]["captions"]) == 5


def test_deterministic_split_and_skip_report():
    keys = [f"k{i}" for i in range(40)]
    split = deterministic_split(keys, seed=0)
    assert [len(split[s]) for s in ("train", "validation", "test")] == [30, 5, 5]
    assert sorted(key for part in split.values() for key in part) == sorted(keys)
    assert deterministic_split(reversed(keys), seed=0) == split  # order of the input does not matter
    assert deterministic_split(keys, seed=1) != split
    assert all(deterministic_split(["a", "b", "c"], seed=s)["test"] for s in range(5))
    skipped = SkipCounts()
    assert skipped.report() == "nothing skipped"
    skipped.add("missing_image", "a.jpg")
    skipped.add("empty_caption", count=2)
    assert skipped.report() == "skipped 1 missing_image (e.g. a.jpg), 2 empty_caption"
    with pytest.raises(ValueError, match="Unknown skip reason"):
        skipped.add("gremlins")


def test_subset_item_without_image_and_fingerprint(tmp_path):
    splits = load_caption_splits("synthetic", train_size=30, validation_size=5, test_size=5)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [30, 5, 5]
    train = splits["train"]
    subset = train.subset(range(4))
    assert len(subset) == 4 and subset.records == train.records[:4] and subset.skipped is train.skipped
    assert train.item_without_image(2) == {
        "captions": train.records[2].captions,
        "image_id": "synthetic-train-00002",
        "index": 2,
    }
    again = load_caption_splits("synthetic", train_size=30, validation_size=5, test_size=5)["train"]
    assert train.fingerprint() == again.fingerprint() != subset.fingerprint()
    bigger = load_caption_splits("synthetic", train_size=30, validation_size=5, test_size=5, image_size=48)["train"]
    assert bigger.fingerprint() != train.fingerprint()
    with pytest.raises(ValueError, match="either as sizes or"):
        load_caption_splits("synthetic", sizes=(3, 1, 1), train_size=4)
    # Files: the fingerprint follows the file's content (size and modification time), not just its name.
    root = make_original_flickr8k(tmp_path / "Flickr8k")
    before = load_caption_splits("flickr8k", data_dir=root)["test"].fingerprint()
    write_image(root / "Flicker8k_Dataset" / good_names(8)[6], seed=123, size=(20, 20))
    assert load_caption_splits("flickr8k", data_dir=root)["test"].fingerprint() != before
