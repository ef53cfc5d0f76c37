"""Degeneration diagnostics: exact values on hand-built captions and references, their input checks and log line, and
generate_captions' per-image flag for captions cut at the length limit (no EOS), with GPT-2's EOS start and padding."""

import PIL.Image
import pytest
import torch
from conftest import tiny_model
from transformers import LogitsProcessor, LogitsProcessorList

from captioning.evaluation.command import generate_captions
from captioning.evaluation.diagnostics import DIAGNOSTICS, caption_diagnostics, format_diagnostics
from modeling_captioner import CaptionerProcessor, build_image_processor

CAPTIONS = [
    "a dog a dog a dog",  # 6 words; repeats a 2-, 3- and 4-gram
    "a cat on a mat",  # 5 words; no repeat ("a" twice is a 1-gram)
    "A cat on a mat.",  # the same caption as the scorers see it
    "",  # no words
    "dog , dog , dog",  # "dog dog dog": repeats "dog dog" only, once the commas are dropped as the scorers drop them
]
TRUNCATED = [True, False, False, True, False]
REFERENCES = [
    ["a dog", "a dog"],
    ["a cat on a mat"],
    ["a cat", "the cat sat on the mat"],
    ["x y x y"],  # the only reference repeating an n-gram (the 2-gram "x y")
    ["dog"],
]


def test_captions_and_truncation_flags_give_exact_shares():
    diagnostics = caption_diagnostics(CAPTIONS, truncated=TRUNCATED)
    assert diagnostics == {
        "repeated_2gram": 2 / 5,
        "repeated_3gram": 1 / 5,
        "repeated_4gram": 1 / 5,
        "truncated": 2 / 5,
        "distinct_captions": 4 / 5,
        "vocabulary": 5,  # a, dog, cat, on, mat
        "mean_length": 19 / 5,
    }
    assert list(diagnostics) == list(DIAGNOSTICS)


def test_truncated_is_absent_without_flags():
    diagnostics = caption_diagnostics(CAPTIONS)
    assert "truncated" not in diagnostics and diagnostics["repeated_2gram"] == 2 / 5


def test_references_are_pooled_beside_the_captions():
    diagnostics = caption_diagnostics(CAPTIONS, REFERENCES, TRUNCATED)
    # Seven references, each counted as one caption; no truncation flag for people's captions.
    assert {k: v for k, v in diagnostics.items() if k.startswith("references/")} == {
        "references/repeated_2gram": 1 / 7,
        "references/repeated_3gram": 0.0,
        "references/repeated_4gram": 0.0,
        "references/distinct_captions": 6 / 7,  # "a dog" twice
        "references/vocabulary": 9,  # a, dog, cat, on, mat, the, sat, x, y
        "references/mean_length": 22 / 7,
    }
    assert diagnostics["truncated"] == 2 / 5 and diagnostics["mean_length"] == 19 / 5


def test_dicts_keyed_by_image_id_agree_with_lists_in_any_order():
    ids = [f"image{i}" for i in range(len(CAPTIONS))]
    captions = dict(zip(ids, CAPTIONS, strict=True))
    references = dict(reversed(list(zip(ids, REFERENCES, strict=True))))
    truncated = dict(reversed(list(zip(ids, TRUNCATED, strict=True))))
    assert caption_diagnostics(captions, references, truncated) == caption_diagnostics(CAPTIONS, REFERENCES, TRUNCATED)


def test_identical_captions_have_the_smallest_distinct_share():
    assert caption_diagnostics(["a red car"] * 8)["distinct_captions"] == 1 / 8


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (([],), "no captions to diagnose"),
        (({},), "no captions to diagnose"),
        (("a dog",), "captions must be a list or a dict"),
        ((["a dog"], None, [True, False]), "got 1 captions but 2 entries in truncated"),
        ((["a dog"], None, [1]), "truncated must hold one bool per caption"),
        ((["a dog"], [["a dog"], ["a cat"]]), "got 1 captions but 2 entries in references"),
        ((["a dog"], [[]]), "references holds no reference caption"),
        (({"x": "a dog"}, None, [True]), "so truncated must be one too"),
        (({"x": "a dog"}, {"y": ["a dog"]}), "references must have the captions' image ids; 2 id"),
        ((["a dog"], {"x": ["a dog"]}), "captions is a list, so references must be a list"),
    ],
)
def test_bad_inputs_are_sentences(arguments, message):
    with pytest.raises(ValueError, match=message):
        caption_diagnostics(*arguments)


def test_log_line():
    assert format_diagnostics(caption_diagnostics(CAPTIONS, REFERENCES, TRUNCATED)) == (
        "repeated 2/3/4-grams 40.0%/20.0%/20.0%, truncated 40.0%, distinct 80.0%, vocabulary 5, mean length 3.80 "
        "(references: repeated 2/3/4-grams 14.3%/0.0%/0.0%, distinct 85.7%, vocabulary 9, mean length 3.14)"
    )
    assert format_diagnostics(caption_diagnostics(["a dog"])) == (
        "repeated 2/3/4-grams 0.0%/0.0%/0.0%, distinct 100.0%, vocabulary 2, mean length 2.00"
    )


class EndFirstRowAtOnce(LogitsProcessor):
    """Row 0 of every batch generates EOS first; the other rows can never generate it, so they run to the limit."""

    def __init__(self, eos_token_id: int):
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        scores[:, self.eos_token_id] = -float("inf")
        scores[0] = -float("inf")
        scores[0, self.eos_token_id] = 0.0
        return scores


@pytest.mark.parametrize(
    ("decoder", "overrides"),
    [
        ("transformer", {}),
        # GPT-2's one special token starts, ends and pads captions: the start is no EOS, padding after one is.
        ("gpt2", {"pad_token_id": 3, "bos_token_id": 3, "decoder_start_token_id": 3}),
        ("lstm", {}),
    ],
)
def test_generate_captions_flags_captions_without_eos(decoder, overrides, tokenizer):
    model = tiny_model("resnet", decoder, tokenizer, **overrides)
    eos = model.generation_config.eos_token_id
    assert eos == 3 and all(model.generation_config.to_dict()[name] == 3 for name in overrides)
    processor = CaptionerProcessor(build_image_processor(model.config), tokenizer)
    dataset = [
        {
            "image_id": f"image{i}",
            "captions": ["a cat"],
            "image": PIL.Image.new("RGB", (40, 40), (50 * i, 90, 20)),
            "index": i,
        }
        for i in range(5)
    ]
    # Batches of 2: images 0, 2 and 4 are their batch's row 0 and end at once; 1 and 3 reach max_new_tokens.
    generated = generate_captions(
        model,
        processor,
        dataset,
        batch_size=2,
        show_progress=False,
        max_new_tokens=4,
        logits_processor=LogitsProcessorList([EndFirstRowAtOnce(eos)]),
    )
    expected = {"image0": False, "image1": True, "image2": False, "image3": True, "image4": False}
    assert generated.truncated == expected
    predictions, references, dropped, truncated = generated
    assert predictions["image0"] == "" and predictions["image1"] != "" and dropped == 0 and truncated == expected
    assert caption_diagnostics(predictions, references, truncated)["truncated"] == 2 / 5
    # A list of EOS ids counts any of them; a model without an EOS token gives no flags rather than made-up ones.
    assert generate_captions(
        model,
        processor,
        dataset[:1],
        show_progress=False,
        max_new_tokens=4,
        eos_token_id=[7, eos],
        logits_processor=LogitsProcessorList([EndFirstRowAtOnce(eos)]),
    ).truncated == {"image0": False}
    model.generation_config.eos_token_id = None
    assert generate_captions(model, processor, dataset[:2], show_progress=False, max_new_tokens=2).truncated is None
