"""Degeneration diagnostics of generated captions: captions that repeat themselves, run to the length limit, or are
the same for many images, measured on the words the caption metrics score, with the references' values beside them.

Public API: :func:`caption_diagnostics`, :func:`format_diagnostics`, :data:`DIAGNOSTICS`.
"""

from collections.abc import Mapping, Sequence

from captioning.evaluation.metrics import ptb_tokenize

__all__ = ["DIAGNOSTICS", "REFERENCES_PREFIX", "SHARES", "caption_diagnostics", "format_diagnostics"]

# Key -> what it measures, in the order reports show them (the model card's rows, README).
DIAGNOSTICS = {
    "repeated_2gram": "captions in which a 2-gram occurs twice or more",
    "repeated_3gram": "captions in which a 3-gram occurs twice or more",
    "repeated_4gram": "captions in which a 4-gram occurs twice or more",
    "truncated": "captions cut at the length limit (no EOS generated)",
    "distinct_captions": "distinct captions / captions",
    "vocabulary": "distinct words over all captions",
    "mean_length": "words per caption",
}
# Shares in [0, 1]; the others are counts.
SHARES = ("repeated_2gram", "repeated_3gram", "repeated_4gram", "truncated", "distinct_captions")
REFERENCES_PREFIX = "references/"


def _has_repeated_ngram(words: list[str], n: int) -> bool:
    ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(ngrams)) < len(ngrams)


def _statistics(captions: list[str], truncated: list[bool] | None = None) -> dict[str, float | int]:
    tokenized = [ptb_tokenize(caption) for caption in captions]
    words = [text.split() for text in tokenized]
    statistics: dict[str, float | int] = {
        f"repeated_{n}gram": sum(_has_repeated_ngram(w, n) for w in words) / len(words) for n in (2, 3, 4)
    }
    if truncated is not None:
        statistics["truncated"] = sum(truncated) / len(truncated)
    # Compared as the scorers see them: "A dog." and "a dog" are the same caption.
    statistics["distinct_captions"] = len(set(tokenized)) / len(tokenized)
    statistics["vocabulary"] = len({word for w in words for word in w})
    statistics["mean_length"] = sum(len(w) for w in words) / len(words)
    return statistics


def _in_caption_order(name: str, values, ids: list | None, count: int) -> list:
    """`values` (a list in the captions' order, or a dict keyed like the captions) as a list in the captions' order."""
    if ids is not None:
        if not isinstance(values, Mapping):
            raise ValueError(
                f"captions is a dict keyed by image id, so {name} must be one too, got a {type(values).__name__}"
            )
        differing = set(values) ^ set(ids)
        if differing:
            raise ValueError(
                f"{name} must have the captions' image ids; {len(differing)} id(s) are in only one of them, e.g. "
                f"{next(iter(differing))!r}"
            )
        return [values[i] for i in ids]
    if isinstance(values, Mapping | str) or not isinstance(values, Sequence):
        raise ValueError(
            f"captions is a list, so {name} must be a list in the same order, got {type(values).__name__}"
        )
    if len(values) != count:
        raise ValueError(f"got {count} captions but {len(values)} entries in {name}: one per caption, in order")
    return list(values)


def caption_diagnostics(
    captions: Sequence[str] | Mapping[object, str],
    references: Sequence[Sequence[str]] | Mapping[object, Sequence[str]] | None = None,
    truncated: Sequence[bool] | Mapping[object, bool] | None = None,
) -> dict[str, float | int]:
    """
    How much generated captions degenerate: repeat themselves, run to the length limit, say the same thing for many
    images, use few words. Computed on the words the caption metrics score (:func:`captioning.evaluation.metrics.ptb_tokenize`:
    lower-cased PTB tokens, punctuation dropped); an empty caption has no words.

    Args:
        captions (`list[str]` or `dict[image_id, str]`):
            One generated caption per image.
        references (`list[list[str]]` or `dict[image_id, list[str]]`, *optional*):
            The reference captions of each image. Their statistics, pooled over every reference, are returned beside
            the captions' under `"references/"` keys: what people's captions of the same images look like.
        truncated (`list[bool]` or `dict[image_id, bool]`, *optional*):
            Per caption, whether generation stopped at the length limit without an EOS token (as
            `captioning.evaluation.command.generate_captions` returns them). Without them `"truncated"` is absent: it cannot
            be read off the text.

    Returns:
        `dict[str, float | int]`, flat (for metrics.json and trackers), keys in the order of [`DIAGNOSTICS`]:
        - `"repeated_2gram"`, `"repeated_3gram"`, `"repeated_4gram"`: share of captions (0..1) in which some 2-, 3- or
          4-gram occurs at least twice ("a dog and a dog" repeats the 2-gram "a dog");
        - `"truncated"` (only with `truncated`): share of captions cut at the length limit;
        - `"distinct_captions"`: distinct captions / captions, in (0, 1] (1: every image gets its own caption);
        - `"vocabulary"` (`int`): distinct words over all captions;
        - `"mean_length"`: mean words per caption;
        - with `references`, the same under `"references/..."` keys (no `"references/truncated"`), every reference
          of every image counting as one caption.

    Raises:
        `ValueError`: no captions, references or flags that do not match the captions, or no reference at all.

    Example:

    ```python
    >>> diagnostics = caption_diagnostics(["a dog a dog a dog", "A cat on a mat.", "a cat on a mat"])
    >>> diagnostics["repeated_2gram"], diagnostics["distinct_captions"], diagnostics["vocabulary"]
    (0.3333333333333333, 0.6666666666666666, 5)
    ```
    """
    if isinstance(captions, str) or not isinstance(captions, Sequence | Mapping):
        raise ValueError(f"captions must be a list or a dict keyed by image id, got {type(captions).__name__}")
    if len(captions) == 0:
        raise ValueError("no captions to diagnose: captions is empty")
    ids = list(captions) if isinstance(captions, Mapping) else None
    texts = [captions[i] for i in ids] if ids is not None else list(captions)
    flags = None
    if truncated is not None:
        flags = _in_caption_order("truncated", truncated, ids, len(texts))
        if not all(isinstance(flag, bool) for flag in flags):
            raise ValueError("truncated must hold one bool per caption (True: cut at the length limit)")
    diagnostics = _statistics(texts, flags)
    if references is not None:
        pooled = [ref for refs in _in_caption_order("references", references, ids, len(texts)) for ref in refs]
        if not pooled:
            raise ValueError("references holds no reference caption: give each image's references, or None")
        diagnostics.update({REFERENCES_PREFIX + key: value for key, value in _statistics(pooled).items()})
    return diagnostics


def _format(diagnostics: dict, prefix: str = "") -> str:
    def share(key: str) -> str:
        return f"{100 * diagnostics[prefix + key]:.1f}%"

    parts = [f"repeated 2/3/4-grams {share('repeated_2gram')}/{share('repeated_3gram')}/{share('repeated_4gram')}"]
    if prefix + "truncated" in diagnostics:
        parts.append(f"truncated {share('truncated')}")
    parts += [
        f"distinct {share('distinct_captions')}",
        f"vocabulary {diagnostics[prefix + 'vocabulary']}",
        f"mean length {diagnostics[prefix + 'mean_length']:.2f}",
    ]
    return ", ".join(parts)


def format_diagnostics(diagnostics: dict) -> str:
    """
    [`caption_diagnostics`]' result as one log line.

    Args:
        diagnostics (`dict`): what [`caption_diagnostics`] returned (other keys, such as scores, are ignored).

    Returns:
        `str`: e.g. "repeated 2/3/4-grams 40.0%/20.0%/0.0%, truncated 10.0%, distinct 50.0%, vocabulary 23, mean
        length 8.20 (references: repeated 2/3/4-grams 1.0%/0.0%/0.0%, distinct 100.0%, vocabulary 41, mean length
        9.10)".
    """
    line = _format(diagnostics)
    if REFERENCES_PREFIX + "mean_length" in diagnostics:
        line += f" (references: {_format(diagnostics, REFERENCES_PREFIX)})"
    return line
