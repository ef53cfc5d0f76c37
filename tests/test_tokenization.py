"""Tests for the caption vocabulary package `tokenization`: caption readers, tokenizer builder and command line."""

import hashlib
import json
import os
import random
import re
import string
import subprocess
import sys
from importlib import resources
from pathlib import Path

import huggingface_hub.constants
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tokenization import SPECIAL_TOKENS, build_tokenizer, count_pieces, load_base_vocab, read_captions, unk_rate
from tokenization.__main__ import main

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_CAPTIONS = Path(__file__).parent / "fixtures" / "captions.txt"
VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
# 5 special tokens + 68 lower-cased printable-ASCII characters + "##" forms of a-z and 0-9.
MINIMUM_VOCAB_SIZE = 109
VOCAB_SIZE = 250
CLI_LINE = re.compile(r"vocabulary: (\d+) pieces; \[UNK\] rate on (\d+) captions: (\d+\.\d\d)%")


@pytest.fixture(scope="module")
def captions() -> list[str]:
    return read_captions(FIXTURE_CAPTIONS)


@pytest.fixture(scope="module")
def tokenizer(captions: list[str]) -> PreTrainedTokenizerFast:
    return build_tokenizer(captions, vocab_size=VOCAB_SIZE)


def _offline_env(tmp_path: Path) -> dict[str, str]:
    # An empty HF_HOME makes "not cached" certain even on a machine that has downloaded bert-base-uncased.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tokenization", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _random_printable(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(string.printable) for _ in range(length))


# ---------------------------------------------------------------------------------------------------------------------
# Packaged vocabulary


def test_packaged_vocab_is_unmodified_bert_base_uncased():
    data = resources.files("tokenization").joinpath("data", "bert-base-uncased-vocab.txt").read_bytes()
    assert hashlib.sha256(data).hexdigest() == VOCAB_SHA256
    vocab = load_base_vocab()
    assert len(vocab) == 30522
    assert vocab[0] == "[PAD]" and vocab[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    notice = resources.files("tokenization").joinpath("data", "NOTICE").read_text(encoding="utf-8")
    assert "Apache" in notice and "bert-base-uncased" in notice


# ---------------------------------------------------------------------------------------------------------------------
# build_tokenizer


def test_special_tokens_have_fixed_ids(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.mask_token_id) == (0, 1, 4)
    assert (tokenizer.bos_token_id, tokenizer.cls_token_id) == (2, 2)
    assert (tokenizer.eos_token_id, tokenizer.sep_token_id) == (3, 3)
    ids = tokenizer("A dog runs .")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and len(ids) == 6
    pair = tokenizer.convert_ids_to_tokens(tokenizer("a dog", "the grass")["input_ids"])
    assert pair == ["[CLS]", "a", "dog", "[SEP]", "the", "grass", "[SEP]"]


def test_vocab_size_is_respected(tokenizer, captions):
    assert len(tokenizer) == VOCAB_SIZE
    assert len(tokenizer.get_vocab()) == VOCAB_SIZE
    assert sorted(tokenizer.get_vocab().values()) == list(range(VOCAB_SIZE))
    assert len(build_tokenizer(captions, vocab_size=MINIMUM_VOCAB_SIZE)) == MINIMUM_VOCAB_SIZE


def test_small_corpus_gives_smaller_vocab_than_requested(captions):
    counts = count_pieces(captions, load_base_vocab())
    minimum = set(build_tokenizer(captions, vocab_size=MINIMUM_VOCAB_SIZE).get_vocab())
    expected = MINIMUM_VOCAB_SIZE + len(set(counts) - minimum)
    tokenizer = build_tokenizer(captions, vocab_size=5000)
    assert len(tokenizer) == expected < 5000
    assert set(counts) <= set(tokenizer.get_vocab())


def test_vocab_size_below_minimum_is_rejected(captions):
    with pytest.raises(ValueError, match=f"at least {MINIMUM_VOCAB_SIZE}"):
        build_tokenizer(captions, vocab_size=MINIMUM_VOCAB_SIZE - 1)


@pytest.mark.parametrize("bad", [[], ["", "   ", "\n"]])
def test_empty_caption_list_is_rejected(bad):
    with pytest.raises(ValueError, match="empty caption list"):
        build_tokenizer(bad)


def test_single_string_is_rejected():
    with pytest.raises(TypeError, match="list of caption strings"):
        build_tokenizer("A dog runs .")


def test_printable_ascii_never_maps_to_unk(captions):
    rng = random.Random(1234)
    texts = [_random_printable(rng, rng.randint(1, 80)) for _ in range(300)]
    texts += [
        "zxqv",
        "Qwertyuiop 1234567890 xkcd42",
        string.punctuation,
        string.printable,
        "Mr. O'Neil's 3rd-place finish (at 9:45am) cost $1,000 & 50% of {his} [pride] ~ ^_^ | <3 @home #win `x`",
        "z" * 100,  # BERT's longest word that is still split into pieces
    ]
    # The minimum vocabulary is the worst case: only characters are left to spell unseen words with.
    for built in (build_tokenizer(captions, vocab_size=MINIMUM_VOCAB_SIZE), build_tokenizer(captions)):
        assert unk_rate(built, texts) == 0.0
        encoded = built(texts, add_special_tokens=False)["input_ids"]
        assert all(built.unk_token_id not in ids for ids in encoded)


def test_unk_rate_counts_unknown_tokens(tokenizer):
    # An emoji is not in the BERT vocabulary, and BERT turns an over-long word into one [UNK].
    assert unk_rate(tokenizer, ["\U0001f436 dog"]) == pytest.approx(0.5)
    assert unk_rate(tokenizer, ["a " + "x" * 101]) == pytest.approx(0.5)
    assert unk_rate(tokenizer.backend_tokenizer, ["\U0001f436 dog runs"]) == pytest.approx(1 / 3)
    assert unk_rate(tokenizer, []) == 0.0


def test_accents_are_stripped_and_text_lowercased(tokenizer):
    accented = tokenizer("Café NAÏVE Über", add_special_tokens=False)["input_ids"]
    plain = tokenizer("cafe naive uber", add_special_tokens=False)["input_ids"]
    assert accented == plain
    assert tokenizer.unk_token_id not in plain
    assert tokenizer("A BLACK Dog")["input_ids"] == tokenizer("a black dog")["input_ids"]


def test_decode_round_trip_has_no_fragments(tokenizer):
    ids = tokenizer("a dog runs", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "a dog runs"

    text = "The skateboarder zxqv performs a flip ."
    tokens = tokenizer.tokenize(text)
    assert any(token.startswith("##") for token in tokens), tokens  # the round trip below must rejoin pieces
    with_specials = tokenizer(text)["input_ids"]
    assert tokenizer.decode(with_specials, skip_special_tokens=True) == text.lower()
    assert "##" not in tokenizer.decode(with_specials)
    assert tokenizer.decode(tokenizer("Café NAÏVE .")["input_ids"], skip_special_tokens=True) == "cafe naive ."


def test_frequent_corpus_words_are_whole_pieces(tokenizer, captions):
    words = [word for caption in captions for word in caption.lower().split()]
    for word in ("dog", "running", "grass", "beach", "snow", "playing", "children", "ball"):
        assert words.count(word) >= 3, word
        assert tokenizer.tokenize(word) == [word]
    # Whole words in bert-base-uncased that the corpus never uses are pruned and spelled from pieces instead.
    for word in ("philosophy", "parliament"):
        assert word in load_base_vocab()
        assert len(tokenizer.tokenize(word)) > 1


def test_most_frequent_pieces_are_kept_first(captions):
    counts = count_pieces(captions, load_base_vocab())
    tokenizer = build_tokenizer(captions, vocab_size=MINIMUM_VOCAB_SIZE + 10)
    vocab = tokenizer.get_vocab()
    added = sorted((piece for piece in vocab if vocab[piece] >= MINIMUM_VOCAB_SIZE), key=vocab.get)
    assert len(added) == 10
    dropped = set(counts) - set(vocab)
    assert min(counts[piece] for piece in added) >= max(counts[piece] for piece in dropped)
    assert [counts[piece] for piece in added] == sorted((counts[piece] for piece in added), reverse=True)


def test_min_frequency_drops_rare_pieces(captions):
    counts = count_pieces(captions, load_base_vocab())
    minimum = set(build_tokenizer(captions, vocab_size=MINIMUM_VOCAB_SIZE).get_vocab())
    tokenizer = build_tokenizer(captions, vocab_size=5000, min_frequency=3)
    extra = set(tokenizer.get_vocab()) - minimum
    assert extra == {piece for piece, count in counts.items() if count >= 3} - minimum
    assert extra and "kayak" not in extra  # seen once in the fixture


def test_build_is_deterministic(captions, tokenizer):
    shuffled = list(captions)
    random.Random(7).shuffle(shuffled)
    again = build_tokenizer(shuffled, vocab_size=VOCAB_SIZE)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_save_pretrained_and_autotokenizer_round_trip(tokenizer, tmp_path):
    saved = tokenizer.save_pretrained(tmp_path)
    assert {Path(path).name for path in saved} >= {"tokenizer.json", "tokenizer_config.json"}
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, PreTrainedTokenizerFast)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    texts = ["A black dog is running through the grass .", "zxqv Café!", "a dog", "[CLS] raw [SEP] tokens"]
    assert loaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert loaded(texts, padding=True)["input_ids"] == tokenizer(texts, padding=True)["input_ids"]
    names = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token", "bos_token", "eos_token")
    expected = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[CLS]", "[SEP]"]
    assert [getattr(loaded, name) for name in names] == expected
    assert [getattr(loaded, f"{name}_id") for name in names] == [0, 1, 2, 3, 4, 2, 3]
    assert loaded.model_max_length == tokenizer.model_max_length == 128
    ids = loaded(texts[0])["input_ids"]
    assert loaded.decode(ids, skip_special_tokens=True) == "a black dog is running through the grass ."


def test_base_vocab_from_local_file(tmp_path, captions):
    base = load_base_vocab()
    coverage = [token for token in base if len(token.removeprefix("##")) == 1 and token.isascii()]
    # No "running": the tokenizer has to fall back on "run" + "##ning".
    words = ["the", "dog", "run", "##ning", "##s", "grass", "zebra"]
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join([*SPECIAL_TOKENS, *words, *coverage]) + "\n", encoding="utf-8")

    tokenizer = build_tokenizer(captions, vocab_size=5000, base_vocab=vocab_file)
    vocab = tokenizer.get_vocab()
    assert set(vocab) <= set(vocab_file.read_text(encoding="utf-8").split("\n"))
    assert "zebra" not in vocab  # in the base file but not in the corpus
    assert tokenizer.tokenize("Running dogs") == ["run", "##ning", "dog", "##s"]
    assert build_tokenizer(captions, vocab_size=5000, base_vocab=str(vocab_file)).get_vocab() == vocab


def test_base_vocab_from_saved_tokenizer_directory(tmp_path, tokenizer, captions):
    tokenizer.save_pretrained(tmp_path)
    rebuilt = build_tokenizer(captions[:20], vocab_size=150, base_vocab=tmp_path)
    assert len(rebuilt) == 150
    assert set(rebuilt.get_vocab()) <= set(tokenizer.get_vocab())
    with pytest.raises(ValueError, match=r"tokenizer\.json.*directory"):
        build_tokenizer(captions, base_vocab=tmp_path / "tokenizer.json")


def test_missing_base_vocab_file_is_reported(tmp_path, captions):
    missing = tmp_path / "no-such-vocab.txt"
    with pytest.raises(FileNotFoundError, match=r"no-such-vocab\.txt"):
        build_tokenizer(captions, base_vocab=missing)


def test_hub_id_offline_fails_clearly(monkeypatch, captions):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The env var is read once at import; this is the flag huggingface_hub and transformers consult at call time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"'captioner-tests/no-such-tokenizer'.*HF_HUB_OFFLINE"):
        build_tokenizer(captions, base_vocab="captioner-tests/no-such-tokenizer")


# ---------------------------------------------------------------------------------------------------------------------
# read_captions


def test_read_plain_text(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("\ufeffA dog runs .\n\n   \n  Two children play in a park .  \r\nA cat, a dog, and a bird .\n")
    assert read_captions(path) == ["A dog runs .", "Two children play in a park .", "A cat, a dog, and a bird ."]


def test_read_kaggle_flickr8k_captions_txt(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text(
        "image,caption\n"
        "1000268201_693b08cb0e.jpg,A child in a pink dress is climbing up a set of stairs in an entry way .\n"
        '1001773457_577c3a7d70.jpg,"A black dog and a spotted dog are fighting , playing"\n'
        "1002674143_1b742ab4b8.jpg,\n"
    )
    assert read_captions(path) == [
        "A child in a pink dress is climbing up a set of stairs in an entry way .",
        "A black dog and a spotted dog are fighting , playing",
    ]


def test_read_flickr8k_token_txt(tmp_path):
    path = tmp_path / "Flickr8k.token.txt"
    path.write_text(
        "1000268201_693b08cb0e.jpg#0\tA child in a pink dress is climbing up a set of stairs in an entry way .\n"
        "1000268201_693b08cb0e.jpg#1\tA girl going into a wooden building .\n"
    )
    assert read_captions(path) == [
        "A child in a pink dress is climbing up a set of stairs in an entry way .",
        "A girl going into a wooden building .",
    ]
    # The same layout in a .tsv has no header either.
    tsv = tmp_path / "tokens.tsv"
    tsv.write_text(path.read_text())
    assert read_captions(tsv) == read_captions(path)


def test_read_flickr8k_token_txt_with_malformed_line(tmp_path):
    path = tmp_path / "Flickr8k.token.txt"
    path.write_text("a.jpg#0\tA dog .\nthis line has no image name\n")
    with pytest.raises(ValueError, match="line 2"):
        read_captions(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("data.csv", 'image,caption\na.jpg,"A dog, wet, runs ."\nb.jpg,A cat sleeps .\n'),
        ("data.csv", 'id,Captions,split\n1,"A dog, wet, runs .",train\n2,A cat sleeps .,val\n3,,train\n'),
        ("data.tsv", "image\ttext\na.jpg\tA dog, wet, runs .\nb.jpg\tA cat sleeps .\n"),
    ],
)
def test_read_csv_and_tsv(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    assert read_captions(path) == ["A dog, wet, runs .", "A cat sleeps ."]


def test_read_csv_without_caption_column(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("image,label\na.jpg,dog\n")
    with pytest.raises(ValueError, match=r"data\.csv.*caption"):
        read_captions(path)


def test_read_json_list(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(["A dog runs .", "  ", "A cat sleeps ."]))
    assert read_captions(path) == ["A dog runs .", "A cat sleeps ."]


def test_read_karpathy_json(tmp_path):
    path = tmp_path / "dataset_flickr8k.json"
    images = [
        {
            "filename": "a.jpg",
            "split": "train",
            "sentences": [{"raw": "A dog runs .", "tokens": ["a", "dog", "runs"]}],
        },
        {"filename": "b.jpg", "split": "test", "sentences": [{"raw": "A cat sleeps ."}, {"raw": "A cat naps ."}]},
    ]
    path.write_text(json.dumps({"images": images, "dataset": "flickr8k"}))
    assert read_captions(path) == ["A dog runs .", "A cat sleeps .", "A cat naps ."]


def test_read_coco_json(tmp_path):
    path = tmp_path / "captions_train2017.json"
    annotations = [{"image_id": 1, "id": 10, "caption": "A dog runs."}, {"image_id": 2, "id": 11, "caption": "A cat."}]
    path.write_text(json.dumps({"info": {}, "images": None, "annotations": annotations}))
    assert read_captions(path) == ["A dog runs.", "A cat."]


def test_read_json_unknown_layout(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"results": []}))
    with pytest.raises(ValueError, match=r"other\.json.*Karpathy"):
        read_captions(path)


def test_read_jsonl(tmp_path):
    path = tmp_path / "captions.jsonl"
    lines = [{"image": "a.jpg", "caption": "A dog runs ."}, {"text": "A cat sleeps ."}, {"caption": ""}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert read_captions(path) == ["A dog runs .", "A cat sleeps ."]


def test_read_jsonl_without_caption_field(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"caption": "A dog ."}\n{"label": "cat"}\n')
    with pytest.raises(ValueError, match=r"captions\.jsonl' line 2.*caption"):
        read_captions(path)


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing-here\.txt"):
        read_captions(tmp_path / "nothing-here.txt")


def test_read_unknown_extension(tmp_path):
    path = tmp_path / "captions.xml"
    path.write_text("<caption>A dog</caption>")
    with pytest.raises(ValueError, match=r"captions\.xml.*\.txt, \.csv, \.tsv, \.json, \.jsonl"):
        read_captions(path)


@pytest.mark.parametrize(
    ("name", "content"), [("empty.txt", "\n  \n"), ("empty.json", "[]"), ("empty.csv", "caption\n")]
)
def test_read_file_without_captions(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=f"no captions found in '.*{name}'; expected"):
        read_captions(path)


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def test_cli_builds_saves_and_reports(tmp_path, captions):
    extra = tmp_path / "more.jsonl"
    extra.write_text(json.dumps({"caption": "A zebra grazes near a giraffe ."}) + "\n")
    output = tmp_path / "tokenizer"
    result = _run_cli(
        "--captions", str(FIXTURE_CAPTIONS), "--captions", str(extra), "--vocab-size", "200", "--output", str(output),
        env=_offline_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    match = CLI_LINE.search(result.stdout)
    assert match, result.stdout
    assert match.groups() == ("200", str(len(captions) + 1), "0.00")
    loaded = AutoTokenizer.from_pretrained(output)
    assert len(loaded) == 200
    assert loaded.tokenize("A zebra") == build_tokenizer([*captions, "A zebra grazes near a giraffe ."], 200).tokenize(
        "A zebra"
    )


def test_cli_missing_file_exits_2_with_one_line(tmp_path):
    missing = tmp_path / "missing-captions.txt"
    result = _run_cli("--captions", str(missing), "--output", str(tmp_path / "out"), env=_offline_env(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "missing-captions.txt" in result.stderr and "not found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_hub_id_offline_exits_2(tmp_path):
    result = _run_cli(
        "--captions", str(FIXTURE_CAPTIONS), "--base-vocab", "bert-base-uncased", "--output", str(tmp_path / "out"),
        env=_offline_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert "'bert-base-uncased'" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--vocab-size", "100"],  # --captions and --output missing
        ["--captions", "c.txt", "--output", "out", "--vocab-size", "many"],
        ["--captions", "c.txt", "--output", "out", "--vocab-size", "0"],
        ["--captions", "c.txt", "--output", "out", "--no-such-flag"],
    ],
)
def test_cli_bad_flags_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_cli_too_small_vocab_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--captions", str(FIXTURE_CAPTIONS), "--vocab-size", "50", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"at least {MINIMUM_VOCAB_SIZE}" in err
