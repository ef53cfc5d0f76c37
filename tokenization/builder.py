"""Builds a caption tokenizer: a BERT WordPiece vocabulary pruned to the pieces a caption corpus actually uses."""

import logging
import os
import string
from collections import Counter
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# Ids 0..4 in this order in every vocabulary built here; the model relies on [PAD] being 0.
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)

PACKAGED_VOCAB = "bert-base-uncased-vocab.txt"
CONTINUATION_PREFIX = "##"
# BERT's own limit: a longer "word" (an unbroken run of letters/digits) becomes a single [UNK].
MAX_INPUT_CHARS_PER_WORD = 100
DEFAULT_VOCAB_SIZE = 15000
DEFAULT_MODEL_MAX_LENGTH = 128


def _normalizer() -> normalizers.Normalizer:
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True)


def _wordpiece_tokenizer(vocab: dict[str, int]) -> Tokenizer:
    tokenizer = Tokenizer(
        models.WordPiece(
            vocab=vocab,
            unk_token=UNK_TOKEN,
            continuing_subword_prefix=CONTINUATION_PREFIX,
            max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD,
        )
    )
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def packaged_vocab_text() -> str:
    """
    Returns the text of the packaged bert-base-uncased `vocab.txt` (30522 lines, Apache-2.0, see `data/NOTICE`).

    Read through `importlib.resources` so it also works from an installed wheel or zip.
    """
    return resources.files(__package__).joinpath("data", PACKAGED_VOCAB).read_text(encoding="utf-8")


def _parse_vocab_lines(text: str) -> list[str]:
    # Same convention as BERT's load_vocab: one token per line, only the newline is stripped (a token may be a
    # space-free symbol that str.strip() would otherwise eat, e.g. a non-breaking space).
    return [line for line in text.replace("\r\n", "\n").split("\n") if line]


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that is not on disk is a mistyped path, and saying so beats
    # a confusing "not found on the Hub" error.
    return name.endswith(".txt") or name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def load_base_vocab(base_vocab: str | os.PathLike | None = None) -> list[str]:
    """
    Loads a WordPiece vocabulary as a list of tokens in id order (duplicates dropped, first occurrence kept).

    Args:
        base_vocab (`str` or `os.PathLike`, *optional*):
            `None` for the packaged bert-base-uncased vocabulary; a path to a `vocab.txt` (one token per line); a
            local directory holding a saved tokenizer; or a Hugging Face Hub id such as `"bert-base-uncased"`,
            loaded with `transformers.AutoTokenizer.from_pretrained` (which needs network access or a populated
            cache). Hub and directory tokenizers must use a WordPiece model with the `##` continuation prefix.

    Returns:
        `list[str]`: The tokens, index = id in the base vocabulary.

    Raises:
        `FileNotFoundError`: If `base_vocab` looks like a file path (ends in `.txt`, starts with `/`, `.` or `~`,
            or has more than one `/`) but does not exist.
        `OSError`: If a hub id cannot be loaded (offline, unknown id, no cache); the message names the id.
        `ValueError`: If the vocabulary is empty or the tokenizer is not a `##` WordPiece tokenizer.
    """
    if base_vocab is None:
        return _dedupe(_parse_vocab_lines(packaged_vocab_text()))
    path = Path(base_vocab).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".json":
            # Read line by line, a tokenizer.json would "work" and give a vocabulary of JSON fragments.
            raise ValueError(
                f"base vocabulary '{path}' is a JSON file; pass a vocab.txt, or the directory holding tokenizer.json"
            )
        try:
            tokens = _parse_vocab_lines(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"base vocabulary '{path}' is not a UTF-8 vocab.txt (one token per line)") from None
        if not tokens:
            raise ValueError(f"base vocabulary '{path}' is empty; expected a vocab.txt with one token per line")
        return _dedupe(tokens)
    name = os.fspath(base_vocab)
    if not path.is_dir() and _looks_like_path(name):
        raise FileNotFoundError(f"base vocabulary file not found: '{name}'")
    return _vocab_from_pretrained(name)


def _vocab_from_pretrained(name: str) -> list[str]:
    # Imported here: AutoTokenizer drags in the model registry, which the common (packaged vocab) path never needs.
    from huggingface_hub import is_offline_mode
    from transformers import AutoTokenizer

    try:
        pretrained = AutoTokenizer.from_pretrained(name)
    except Exception as error:  # transformers raises OSError, ValueError, HTTP errors... all mean "cannot load"
        hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if is_offline_mode() else ""
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(
            f"could not load base vocabulary '{name}': it is not a local vocab.txt or directory, and loading it as "
            f"a Hugging Face Hub tokenizer failed{hint}: {reason}"
        ) from error
    backend = getattr(pretrained, "backend_tokenizer", None)
    model = backend.model if backend is not None else None
    if model is not None and (
        not isinstance(model, models.WordPiece) or model.continuing_subword_prefix != CONTINUATION_PREFIX
    ):
        raise ValueError(
            f"base vocabulary '{name}' uses a {type(model).__name__} tokenizer; expected a WordPiece tokenizer with "
            f"the '{CONTINUATION_PREFIX}' continuation prefix (a BERT-style vocab.txt)"
        )
    vocab = pretrained.get_vocab()
    if not vocab:
        raise ValueError(f"base vocabulary '{name}' is empty")
    return _dedupe(token for token, _ in sorted(vocab.items(), key=lambda item: item[1]))


def _dedupe(tokens: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(tokens))


def _coverage_pieces(base_index: dict[str, int]) -> list[str]:
    """Pieces that let every printable-ASCII text be spelled out, character by character, without [UNK]."""
    normalizer = _normalizer()
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    needed = set()
    for char in string.printable:
        if char.isspace():
            continue
        normalized = normalizer.normalize_str(char)
        if not normalized:
            continue
        needed.add(normalized)
        # Punctuation is always split off into a word of its own, so only characters that can sit inside a word
        # (letters, digits) ever need a "##" continuation piece.
        if len(pre_tokenizer.pre_tokenize_str(normalized * 2)) == 1:
            needed.add(CONTINUATION_PREFIX + normalized)
    missing = sorted(needed - base_index.keys())
    if missing:
        logger.warning("base vocabulary lacks %s; text containing them will map to [UNK]", missing)
    return sorted(needed & base_index.keys(), key=base_index.__getitem__)


def _minimum_pieces(base_index: dict[str, int]) -> list[str]:
    return _dedupe([*SPECIAL_TOKENS, *_coverage_pieces(base_index)])


def count_pieces(captions: Iterable[str], base_vocab: list[str]) -> Counter[str]:
    """
    Counts the WordPiece pieces of `captions` when tokenized with the full `base_vocab` (BERT normalisation).

    Args:
        captions (`Iterable[str]`):
            The caption texts.
        base_vocab (`list[str]`):
            The base vocabulary, as returned by [`load_base_vocab`].

    Returns:
        `collections.Counter[str]`: Piece -> number of occurrences ([UNK] included when produced).
    """
    vocab = {token: index for index, token in enumerate(base_vocab)}
    # The base vocab may lack [UNK] (a hand-made vocab.txt); WordPiece needs it to exist.
    vocab.setdefault(UNK_TOKEN, len(vocab))
    tokenizer = _wordpiece_tokenizer(vocab)
    id_to_token = {index: token for token, index in vocab.items()}
    counts: Counter[int] = Counter()
    for encoding in tokenizer.encode_batch_fast(list(captions), add_special_tokens=False):
        counts.update(encoding.ids)
    return Counter({id_to_token[index]: count for index, count in counts.items()})


def build_tokenizer(
    captions: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    base_vocab: str | os.PathLike | None = None,
    min_frequency: int = 1,
    *,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
) -> PreTrainedTokenizerFast:
    """
    Builds a WordPiece tokenizer whose vocabulary is the part of a BERT vocabulary that a caption corpus uses.

    The captions are tokenized with the full base vocabulary (BERT normalisation: lower-casing, accent stripping,
    control-character removal, CJK characters split; BERT pre-tokenization: split on whitespace and punctuation),
    and the pieces are counted. The vocabulary then holds, in id order:

    1. `[PAD] [UNK] [CLS] [SEP] [MASK]` with ids 0-4;
    2. every printable-ASCII character as the normaliser outputs it (lower-case), plus the `##` continuation form of
       letters and digits, where the base vocabulary has them, so that no printable-ASCII text maps to `[UNK]`
       (apart from "words" longer than 100 letters/digits, which become one `[UNK]` as in BERT);
    3. the most frequent remaining corpus pieces seen at least `min_frequency` times, most frequent first, ties
       broken by base-vocabulary order, until the vocabulary holds `vocab_size` pieces.

    If the corpus has fewer qualifying distinct pieces, the vocabulary is smaller than `vocab_size`; check
    `len(tokenizer)`. The result depends only on the piece counts and the arguments (not on caption order), so
    rebuilding from the same captions gives the same vocabulary.

    `[CLS]` doubles as beginning-of-sequence and `[SEP]` as end-of-sequence (`bos_token_id` = 2, `eos_token_id` = 3):
    encoding with special tokens gives `[CLS] caption [SEP]`, which is what a caption decoder is trained on.
    `decode` joins `##` pieces back into words and does no other clean-up, so the decoded text is the normalised
    caption (e.g. "A dog runs ." -> "a dog runs .").

    Args:
        captions (`Iterable[str]`):
            The caption corpus. Empty or whitespace-only captions are ignored.
        vocab_size (`int`, *optional*, defaults to 15000):
            The target number of pieces, special tokens included. Must be at least the number of special tokens plus
            the coverage characters (109 with the bert-base-uncased vocabulary).
        base_vocab (`str` or `os.PathLike`, *optional*):
            Where the pieces come from: `None` for the packaged bert-base-uncased vocabulary, a path to a
            `vocab.txt`, or a Hugging Face Hub id; see [`load_base_vocab`].
        min_frequency (`int`, *optional*, defaults to 1):
            Corpus pieces seen fewer times than this are not added (coverage pieces are always kept).
        model_max_length (`int`, *optional*, defaults to 128):
            Stored as the tokenizer's `model_max_length` (the longest caption, in tokens, that truncation keeps).

    Returns:
        [`transformers.PreTrainedTokenizerFast`]: The tokenizer. `save_pretrained(directory)` writes
        `tokenizer.json` and `tokenizer_config.json`, which `transformers.AutoTokenizer.from_pretrained(directory)`
        loads without `trust_remote_code`.

    Raises:
        `ValueError`: If there are no non-empty captions, `vocab_size` is below the minimum (the message gives it), or
            `min_frequency` is below 1.
        `TypeError`: If `captions` is a single string instead of a collection of captions.
        `FileNotFoundError` / `OSError`: If `base_vocab` cannot be loaded; see [`load_base_vocab`].

    Example:

    ```python
    >>> from tokenization import build_tokenizer
    >>> tokenizer = build_tokenizer(["A black dog runs through the grass ."], vocab_size=200)
    >>> tokenizer.decode(tokenizer("A black dog runs .")["input_ids"], skip_special_tokens=True)
    'a black dog runs .'
    ```
    """
    if isinstance(captions, str):
        raise TypeError("captions should be a list of caption strings, not a single string")
    captions = [caption for caption in captions if caption and caption.strip()]
    if not captions:
        raise ValueError("cannot build a tokenizer from an empty caption list (no non-empty captions given)")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size should be an int, got {vocab_size!r}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency should be at least 1, got {min_frequency}")

    base = load_base_vocab(base_vocab)
    base_index = {token: index for index, token in enumerate(base)}
    kept = _minimum_pieces(base_index)
    if vocab_size < len(kept):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the {len(SPECIAL_TOKENS)} special tokens and the "
            f"{len(kept) - len(SPECIAL_TOKENS)} pieces needed to spell any printable-ASCII text take {len(kept)}, "
            f"so vocab_size must be at least {len(kept)}"
        )

    counts = count_pieces(captions, base)
    taken = set(kept)
    # Tokens absent from the base (only [UNK] can be, see count_pieces) sort last among equals.
    candidates = sorted(
        (piece for piece, count in counts.items() if count >= min_frequency and piece not in taken),
        key=lambda piece: (-counts[piece], base_index.get(piece, len(base_index))),
    )
    kept.extend(candidates[: vocab_size - len(kept)])
    if len(kept) < vocab_size:
        logger.info("the corpus has only %d usable pieces: vocabulary is %d, not %d", len(kept), len(kept), vocab_size)

    vocab = {piece: index for index, piece in enumerate(kept)}
    tokenizer = _wordpiece_tokenizer(vocab)
    # cleanup=False: the WordPiece clean-up would also rewrite " do not" -> " don't" and glue punctuation, which
    # changes the caption; generation code can prettify later.
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX, cleanup=False)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS_TOKEN} $A {SEP_TOKEN}",
        pair=f"{CLS_TOKEN} $A {SEP_TOKEN} $B:1 {SEP_TOKEN}:1",
        special_tokens=[(CLS_TOKEN, vocab[CLS_TOKEN]), (SEP_TOKEN, vocab[SEP_TOKEN])],
    )
    # Registered as special so that "[SEP]" typed in text is one token and skip_special_tokens drops them.
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        cls_token=CLS_TOKEN,
        sep_token=SEP_TOKEN,
        mask_token=MASK_TOKEN,
        bos_token=CLS_TOKEN,
        eos_token=SEP_TOKEN,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def unk_rate(tokenizer: PreTrainedTokenizerBase | Tokenizer, captions: Iterable[str]) -> float:
    """
    Returns the fraction of the tokens produced for `captions` that are the unknown token.

    Special tokens ([CLS], [SEP]) are not added, so they do not dilute the rate.

    Args:
        tokenizer ([`transformers.PreTrainedTokenizerBase`] or `tokenizers.Tokenizer`):
            The tokenizer; a `tokenizers.Tokenizer` must call its unknown token `[UNK]`.
        captions (`Iterable[str]`):
            The texts to tokenize.

    Returns:
        `float`: Between 0 and 1; 0.0 when the captions produce no tokens at all.
    """
    captions = list(captions)
    if isinstance(tokenizer, Tokenizer):
        backend, unk_id = tokenizer, tokenizer.token_to_id(UNK_TOKEN)
    else:
        backend, unk_id = getattr(tokenizer, "backend_tokenizer", None), tokenizer.unk_token_id
    if unk_id is None:
        return 0.0
    if backend is not None:
        sequences = [encoding.ids for encoding in backend.encode_batch_fast(captions, add_special_tokens=False)]
    else:
        sequences = tokenizer(captions, add_special_tokens=False)["input_ids"]
    total = sum(len(ids) for ids in sequences)
    if total == 0:
        return 0.0
    return sum(ids.count(unk_id) for ids in sequences) / total
