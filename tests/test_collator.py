"""CaptionCollator: per-batch padding, -100 exactly on padding, a decoder mask that matches the labels, one reference
per image per epoch picked from (seed, epoch, index) alone, caption pairs, dropped None items and references."""

import pytest
import torch
from conftest import tiny_config
from PIL import Image

from captioning.data import CaptionPairs, load_caption_splits
from captioning.training.collator import MODEL_INPUT_NAMES, CaptionCollator, model_inputs
from modeling_captioner import CaptionerForConditionalGeneration, CaptionerProcessor, build_image_processor

SHORT = "a dog"
LONG = "a man in a red jacket climbs a snowy mountain near the water"


@pytest.fixture(scope="module")
def processor(tokenizer):
    return CaptionerProcessor(build_image_processor(tiny_config("resnet", "transformer", tokenizer)), tokenizer)


@pytest.fixture(scope="module")
def synthetic():
    return load_caption_splits("synthetic", sizes={"train": 24, "validation": 2, "test": 2}, image_size=32)["train"]


def item(index: int, captions: list[str], caption: str | None = None) -> dict:
    data = {
        "image": Image.new("RGB", (20 + index, 16), (index * 10 % 256, 80, 160)),
        "captions": captions,
        "image_id": f"img{index}",
        "index": index,
    }
    if caption is not None:
        data["caption"] = caption
    return data


def token_count(processor, caption: str) -> int:
    return len(processor.tokenizer(caption, add_special_tokens=False)["input_ids"])


def test_labels_are_padded_per_batch_with_minus_100_exactly_on_padding(processor):
    collator = CaptionCollator(processor)
    mixed = collator([item(0, [SHORT]), item(1, [LONG])])
    short_only = collator([item(2, [SHORT]), item(3, ["a cat"])])
    long_length = token_count(processor, LONG) + 1  # + EOS
    assert mixed["labels"].shape == (2, long_length)
    assert short_only["labels"].shape[1] == max(token_count(processor, c) for c in (SHORT, "a cat")) + 1
    assert short_only["labels"].shape[1] < long_length
    labels = mixed["labels"]
    short_length = token_count(processor, SHORT) + 1
    assert (labels[0, short_length:] == -100).all() and (labels[0, :short_length] != -100).all()
    assert (labels[1] != -100).all()
    eos = processor.tokenizer.eos_token_id or processor.tokenizer.sep_token_id
    assert labels[0, short_length - 1] == eos and labels[1, -1] == eos
    assert mixed["pixel_values"].shape == (2, 3, 32, 32) and labels.dtype == torch.long


def test_decoder_attention_mask_covers_start_token_and_caption(processor, tokenizer):
    collator = CaptionCollator(processor)
    batch = collator([item(0, [SHORT]), item(1, [LONG]), item(2, ["two children play on a swing set"])])
    mask = batch["decoder_attention_mask"]
    assert mask.dtype == torch.long and torch.equal(mask, (batch["labels"] != -100).long())
    # One position per decoder input that predicts a real label: the start token plus each caption token.
    for row, caption in enumerate([SHORT, LONG, "two children play on a swing set"]):
        assert mask[row].sum() == token_count(processor, caption) + 1
        assert mask[row, : mask[row].sum()].all()  # a prefix of ones
    model = CaptionerForConditionalGeneration(tiny_config("resnet", "transformer", tokenizer)).eval()
    assert set(model_inputs(batch)) == set(MODEL_INPUT_NAMES) - {"vision_features"}
    with torch.no_grad():
        assert torch.isfinite(model(**model_inputs(batch)).loss)


def test_max_length_cuts_captions(processor):
    batch = CaptionCollator(processor, max_length=4)([item(0, [LONG]), item(1, [SHORT])])
    assert batch["labels"].shape[1] == 4 and batch["decoder_attention_mask"][0].sum() == 4
    with pytest.raises(ValueError, match="max_length=1"):
        CaptionCollator(processor, max_length=1)


def test_one_reference_per_image_per_epoch_deterministic_and_varying(processor, synthetic):
    items = [synthetic[i] for i in range(8)]
    first, again = CaptionCollator(processor, seed=3), CaptionCollator(processor, seed=3)
    per_epoch = []
    for epoch in range(5):
        first.set_epoch(epoch)
        again.set_epoch(epoch)
        chosen = first(items)["captions"]
        assert chosen == again(items)["captions"]
        assert all(c in it["captions"] for c, it in zip(chosen, items, strict=True))
        per_epoch.append(chosen)
    # Over five epochs every image trains on each of its five references once.
    for image in range(8):
        assert sorted(epoch[image] for epoch in per_epoch) == sorted(items[image]["captions"])
    assert per_epoch[0] != per_epoch[1]
    other_seed = CaptionCollator(processor, seed=4)
    assert other_seed(items)["captions"] != per_epoch[0]
    # A resumed run (a new collator set to the same epoch) sees the same captions.
    resumed = CaptionCollator(processor, seed=3)
    resumed.set_epoch(2)
    assert resumed(items)["captions"] == per_epoch[2] and resumed.epoch == 2


def test_choice_is_independent_of_batch_composition_and_order(processor, synthetic):
    collator = CaptionCollator(processor, seed=0)
    collator.set_epoch(1)
    items = [synthetic[i] for i in range(12)]
    whole = dict(zip(collator(items)["image_ids"], collator(items)["captions"], strict=True))
    pieces = {}
    for batch_items in (items[7:], items[3:7][::-1], items[:3]):
        batch = collator(batch_items)
        pieces.update(zip(batch["image_ids"], batch["captions"], strict=True))
    assert pieces == whole
    assert [collator.pick_caption(it["captions"], it["index"]) for it in items] == [
        whole[it["image_id"]] for it in items
    ]


def test_dataloader_workers_see_the_epoch(processor, synthetic):
    collator = CaptionCollator(processor, seed=0)
    loader = torch.utils.data.DataLoader(
        synthetic, batch_size=6, collate_fn=collator, num_workers=2, persistent_workers=True
    )
    for epoch in (0, 3):
        collator.set_epoch(epoch)
        seen = {}
        for batch in loader:
            seen.update(zip(batch["image_ids"], batch["captions"], strict=True))
        expected = {r.image_id: collator.pick_caption(r.captions, i, epoch) for i, r in enumerate(synthetic.records)}
        assert seen == expected
    with pytest.raises(ValueError, match="epoch=-1"):
        collator.set_epoch(-1)


def test_pairs_use_their_own_caption(processor, synthetic):
    pairs = CaptionPairs(synthetic)
    items = [pairs[k] for k in range(10)]
    collator = CaptionCollator(processor, seed=0)
    for epoch in (0, 1, 7):
        collator.set_epoch(epoch)
        batch = collator(items)
        assert batch["captions"] == [it["caption"] for it in items]
        assert batch["references"] == [synthetic.records[it["index"]].captions for it in items]
    explicit = collator([item(0, ["one", "two", "three"], caption="two")])
    assert explicit["captions"] == ["two"] and explicit["references"] == [["one", "two", "three"]]


def test_none_items_are_dropped_and_counted(processor):
    collator = CaptionCollator(processor)
    batch = collator([item(0, [SHORT]), None, item(1, [LONG, SHORT]), None])
    assert batch["num_dropped"] == 2 and batch["image_ids"] == ["img0", "img1"]
    assert batch["pixel_values"].shape[0] == batch["labels"].shape[0] == 2
    assert batch["references"] == [[SHORT], [LONG, SHORT]]
    complete = collator([item(0, [SHORT])])
    assert complete["num_dropped"] == 0
    empty = collator([None, None, None])
    assert empty["num_dropped"] == 3 and empty["image_ids"] == [] and "pixel_values" not in empty
    assert model_inputs(empty) == {}


def test_references_pass_through_with_dataset_items(processor, synthetic):
    batch = CaptionCollator(processor)([synthetic[0], synthetic[5]])
    assert batch["references"] == [synthetic.records[0].captions, synthetic.records[5].captions]
    assert batch["image_ids"] == [synthetic.records[0].image_id, synthetic.records[5].image_id]
    assert all(len(refs) == 5 for refs in batch["references"])


def test_precomputed_vision_features_replace_images(processor, synthetic):
    features = [torch.full((4, 8), float(i)) for i in range(3)]
    cached = [{**synthetic.item_without_image(i), "vision_features": features[i]} for i in range(3)]
    batch = CaptionCollator(processor)(cached)
    assert "pixel_values" not in batch and torch.equal(batch["vision_features"], torch.stack(features))
    assert batch["indices"] == [0, 1, 2] and batch["labels"].shape[0] == 3
    # A batch mixing cached and uncached items gets pixel_values for all rows, zeros where there is no image.
    mixed = CaptionCollator(processor)([cached[0], synthetic[1], None])
    assert "vision_features" not in mixed and mixed["indices"] == [0, 1] and mixed["num_dropped"] == 1
    assert (mixed["pixel_values"][0] == 0).all() and not (mixed["pixel_values"][1] == 0).all()
    with pytest.raises(ValueError, match="neither an image nor vision_features"):
        CaptionCollator(processor)([synthetic.item_without_image(0)])


def test_several_captions_per_image_in_one_batch(processor, synthetic):
    """captions_per_image=n: n distinct references per image and epoch (all 5 of the synthetic scenes with n=5),
    labels image-major beside one image row each, a function of (seed, epoch, index) alone; too few references
    and pair items are named."""
    collator = CaptionCollator(processor, captions_per_image=3)
    items = [synthetic[i] for i in range(4)]
    batch = collator(items)
    assert batch["pixel_values"].shape[0] == 4 and batch["labels"].shape[0] == 12
    assert batch["captions_per_image"] == 3 and len(batch["captions"]) == 12
    for i, data in enumerate(items):
        group = batch["captions"][3 * i : 3 * i + 3]
        assert len(set(group)) == 3 and set(group) <= set(data["captions"])
    decoded = processor.tokenizer.batch_decode(batch["labels"].clamp(min=0), skip_special_tokens=True)
    assert [d.split() for d in decoded] == [c.lower().replace(".", "").split() for c in batch["captions"]]
    # Batch composition does not change an image's picks; the epoch does.
    alone = collator([items[2]])["captions"]
    assert alone == batch["captions"][6:9]
    collator.set_epoch(1)
    assert collator([items[2]])["captions"] != alone
    every = CaptionCollator(processor, captions_per_image=5)(items[:2])
    assert sorted(every["captions"][:5]) == sorted(items[0]["captions"])
    features = CaptionCollator(processor, captions_per_image=2)(
        [{**items[0], "vision_features": torch.ones(5, 8)}, {**items[1], "vision_features": torch.ones(5, 8)}]
    )
    assert features["vision_features"].shape[0] == 2 and features["labels"].shape[0] == 4
    with pytest.raises(ValueError, match=r"Image 0 has 1 reference caption.*captions_per_image=2"):
        CaptionCollator(processor, captions_per_image=2)([item(0, [SHORT])])
    with pytest.raises(ValueError, match="carries its own caption"):
        CaptionCollator(processor, captions_per_image=2)([CaptionPairs(synthetic)[0]])
    with pytest.raises(ValueError, match="positive integer"):
        CaptionCollator(processor, captions_per_image=0)
