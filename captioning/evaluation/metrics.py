"""Caption metrics as the field reports them: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and SPICE) on PTB-tokenized text.

The reference implementation is pycocoevalcap (the COCO caption evaluation code): it lower-cases and tokenizes every
caption with Stanford CoreNLP 3.4.1's PTBTokenizer (Java), drops punctuation tokens, and scores with its own BLEU,
ROUGE-L and CIDEr-D code plus the METEOR 1.5 and SPICE 1.0 jars. This package reproduces the tokenizer
(`ptb_tokenizer`) and the three pure scorers (`scorers`) in Python (same numbers to 1e-6, no Java), and runs the
METEOR/SPICE jars that pycocoevalcap ships when Java and the jars are present (`java`). A metric that cannot be computed is reported as ``None`` with a warning, never as 0.

Public API: :func:`compute_caption_metrics`, :func:`human_agreement`, :func:`ptb_tokenize`,
:class:`CaptionMetricWarning`.
"""

import subprocess
import warnings
from collections.abc import Mapping, Sequence

from captioning.evaluation.java import Meteor, meteor_jar, spice_ready, spice_score
from captioning.evaluation.ptb_tokenizer import ptb_tokenize
from captioning.evaluation.scorers import bleu, cider_d, rouge_l

__all__ = ["CaptionMetricWarning", "compute_caption_metrics", "human_agreement", "ptb_tokenize"]

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")


class CaptionMetricWarning(UserWarning):
    """A caption metric was computed in a way that makes it incomparable with published numbers, or not at all."""


def _describe_ids(ids: list, limit: int = 10) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return f"[{shown}{', ...' if len(ids) > limit else ''}]"


def _check_references(image_id, refs) -> list[str]:
    if isinstance(refs, str) or not isinstance(refs, Sequence):
        raise ValueError(
            f"references for image {image_id!r} must be a list of caption strings, got {type(refs).__name__}"
            + (" (wrap a single reference in a list)" if isinstance(refs, str) else "")
        )
    if len(refs) == 0:
        raise ValueError(f"image {image_id!r} has no references: every scored image needs at least one")
    for ref in refs:
        if not isinstance(ref, str):
            raise ValueError(f"references for image {image_id!r} must be strings, got {type(ref).__name__}")
    return list(refs)


def _check_prediction(image_id, prediction) -> str:
    if not isinstance(prediction, str):
        raise ValueError(
            f"the prediction for image {image_id!r} must be one caption string (pycocoevalcap scores exactly one "
            f"hypothesis per image), got {type(prediction).__name__}"
        )
    return prediction


def _align(predictions, references) -> tuple[list, list[str], list[list[str]]]:
    """Validate the inputs and return (image ids, predictions, references) in one order."""
    if isinstance(predictions, Mapping) != isinstance(references, Mapping):
        raise ValueError(
            f"predictions is a {type(predictions).__name__} but references is a {type(references).__name__}: give "
            "both as dicts keyed by image id, or both as lists in the same image order"
        )
    if isinstance(predictions, Mapping):
        ids = list(predictions)
        missing = [i for i in ids if i not in references]
        extra = [i for i in references if i not in predictions]
        if missing or extra:
            problems = []
            if missing:
                problems.append(
                    f"{len(missing)} image id(s) have a prediction but no references: {_describe_ids(missing)}"
                )
            if extra:
                problems.append(f"{len(extra)} image id(s) have references but no prediction: {_describe_ids(extra)}")
            raise ValueError("predictions and references must cover the same images; " + "; ".join(problems))
        refs = [references[i] for i in ids]
        preds = [predictions[i] for i in ids]
    else:
        for name, value in (("predictions", predictions), ("references", references)):
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ValueError(f"{name} must be a list or a dict keyed by image id, got {type(value).__name__}")
        if len(predictions) != len(references):
            raise ValueError(
                f"got {len(predictions)} predictions but {len(references)} reference lists: one list of references "
                "per predicted caption, in the same order"
            )
        ids = list(range(len(predictions)))
        preds, refs = list(predictions), list(references)
    if not ids:
        raise ValueError("no images to score: predictions and references are empty")
    preds = [_check_prediction(i, p) for i, p in zip(ids, preds, strict=True)]
    refs = [_check_references(i, r) for i, r in zip(ids, refs, strict=True)]
    return ids, preds, refs


def _usage_warnings(num_images: int, mean_references: float, expected_num_images: int | None) -> list[str]:
    messages = []
    if num_images == 1:
        messages.append(
            "scoring a single image: CIDEr-D's document frequencies come from the references of the scored images, "
            "so with one image every n-gram's idf is log(1) - log(1) = 0 and CIDEr-D is 0 by construction; score "
            "the whole split"
        )
    if expected_num_images is not None and num_images != expected_num_images:
        if num_images < expected_num_images:
            messages.append(
                f"scored {num_images} images but expected_num_images={expected_num_images}: numbers on a subset are "
                "not comparable with the full split's (CIDEr-D even depends on which images are in the set)"
            )
        else:
            messages.append(
                f"scored {num_images} images, more than expected_num_images={expected_num_images}: check for "
                "duplicated image ids or the wrong split"
            )
    if mean_references < 2:
        messages.append(
            f"{mean_references:.2f} references per image on average (fewer than 2): BLEU, METEOR and CIDEr-D depend "
            "strongly on the number of references, so these are not comparable with results on COCO (5 per image) "
            "or Flickr (5 per image)"
        )
    return messages


def _score_rounds(
    rounds: list[tuple[list[str], list[list[str]]]], meteor: bool, spice: bool
) -> tuple[dict[str, float | None], list[str]]:
    """Average the metrics over rounds of (tokenized hypotheses, tokenized references); returns (scores, problems)."""
    problems: list[str] = []
    totals: dict[str, float | None] = dict.fromkeys(METRIC_NAMES, 0.0)
    if spice:
        totals["SPICE"] = 0.0
    for hypotheses, references in rounds:
        for name, value in zip(("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"), bleu(hypotheses, references), strict=True):
            totals[name] += value
        totals["ROUGE-L"] += rouge_l(hypotheses, references)
        totals["CIDEr-D"] += cider_d(hypotheses, references)

    if not meteor:
        totals["METEOR"] = None
    else:
        found = meteor_jar()
        if isinstance(found, str):
            totals["METEOR"] = None
            problems.append(f"METEOR not computed: {found}; 'METEOR' is None (absent, not 0)")
        else:
            try:
                with Meteor(*found) as scorer:
                    totals["METEOR"] = sum(scorer.score(h, r) for h, r in rounds)
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as error:
                totals["METEOR"] = None
                problems.append(f"METEOR not computed: {error}; 'METEOR' is None (absent, not 0)")

    if spice:
        reason = spice_ready()
        if reason is None:
            try:
                totals["SPICE"] = sum(spice_score(h, r) for h, r in rounds)
            except Exception as error:
                reason = f"spice-1.0.jar failed: {error}"
        if reason is not None:
            totals["SPICE"] = None
            problems.append(f"SPICE not computed: {reason}; 'SPICE' is None (absent, not 0)")

    scores = {name: (None if total is None else float(total) / len(rounds)) for name, total in totals.items()}
    return scores, problems


def compute_caption_metrics(
    predictions: Sequence[str] | Mapping[object, str],
    references: Sequence[Sequence[str]] | Mapping[object, Sequence[str]],
    *,
    meteor: bool = True,
    spice: bool = False,
    expected_num_images: int | None = None,
    teacher_forced: bool = False,
) -> dict[str, float | int | None]:
    """
    Score captions with the COCO caption metrics, numerically as pycocoevalcap reports them.

    Every caption is PTB-tokenized (:func:`ptb_tokenize`), then scored with corpus BLEU-1..4 (closest reference
    length), METEOR 1.5, ROUGE-L (beta 1.2) and CIDEr-D (document frequencies from the references of the scored
    images), optionally SPICE. BLEU, ROUGE-L and CIDEr-D are computed in Python and equal pycocoevalcap's to 1e-6.
    METEOR and SPICE run the jars pycocoevalcap ships; when Java or a jar is missing the value is `None` and a
    [`CaptionMetricWarning`] says why (never 0).

    Misuse that makes the numbers incomparable with published ones warns (`CaptionMetricWarning`): a single image,
    fewer (or more) images than `expected_num_images`, `teacher_forced=True`, fewer than 2 references per image on
    average.

    Args:
        predictions (`list[str]` or `dict[image_id, str]`):
            One generated caption per image.
        references (`list[list[str]]` or `dict[image_id, list[str]]`):
            The reference captions of each image: lists in the order of `predictions`, or a dict with the same ids.
        meteor (`bool`, *optional*, defaults to `True`):
            Compute METEOR (needs Java and pycocoevalcap's meteor-1.5.jar; about 5 s of jar start-up).
        spice (`bool`, *optional*, defaults to `False`):
            Compute SPICE (needs Java and pycocoevalcap's SPICE jars including Stanford CoreNLP 3.6.0).
        expected_num_images (`int`, *optional*):
            The number of images in the split being evaluated; a different count warns (a subset is not comparable).
        teacher_forced (`bool`, *optional*, defaults to `False`):
            Set when the captions were decoded from teacher-forced logits rather than `generate()`; warns, because
            such captions see the reference and overstate every metric.

    Returns:
        `dict`: `"BLEU-1"` .. `"BLEU-4"`, `"METEOR"` (`float` or `None`), `"ROUGE-L"`, `"CIDEr-D"`, `"SPICE"` (only
        when requested; `float` or `None`) and `"num_images"`. Scales are pycocoevalcap's: BLEU, METEOR, ROUGE-L and
        SPICE in [0, 1], CIDEr-D in [0, 10].

    Raises:
        `ValueError`: mismatched image ids or lengths, an image without references, a prediction that is not one
            string, or no images at all.

    Example:

    ```python
    >>> scores = compute_caption_metrics(
    ...     ["a dog runs on the grass", "two people sit on a bench"],
    ...     [["a dog running on grass", "a brown dog runs"], ["two people sitting on a bench", "people on a bench"]],
    ...     meteor=False,
    ... )
    >>> round(scores["BLEU-1"], 3), scores["num_images"]
    (0.833, 2)
    ```
    """
    ids, preds, refs = _align(predictions, references)
    messages = _usage_warnings(len(ids), sum(len(r) for r in refs) / len(ids), expected_num_images)
    if teacher_forced:
        messages.append(
            "teacher_forced=True: captions decoded from teacher-forced logits (each step sees the reference's "
            "previous words) are not generated captions; these scores overstate the model and are not comparable "
            "with published ones, which caption with generate()"
        )
    hypotheses = [ptb_tokenize(p) for p in preds]
    tokenized_refs = [[ptb_tokenize(r) for r in image_refs] for image_refs in refs]
    scores, problems = _score_rounds([(hypotheses, tokenized_refs)], meteor, spice)
    for message in messages + problems:
        warnings.warn(message, CaptionMetricWarning, stacklevel=2)
    return {**scores, "num_images": len(ids)}


def human_agreement(
    references: Sequence[Sequence[str]] | Mapping[object, Sequence[str]],
    *,
    meteor: bool = True,
    spice: bool = False,
    expected_num_images: int | None = None,
) -> dict[str, float | int | None]:
    """
    Score the references against each other: the "human" row reported beside a model on COCO.

    Leave-one-out over the reference index: for each `k` below the smallest number of references any image has, the
    `k`-th reference of every image is the prediction and the image's other references are the references; the
    metrics of these rounds are averaged. (An image with more references than the smallest count keeps its extra
    references as references in every round.) Each round is scored with `n - 1` references where a model gets `n`,
    so human agreement is slightly understated; that is how it is reported.

    Args:
        references (`list[list[str]]` or `dict[image_id, list[str]]`):
            At least 2 reference captions per image.
        meteor (`bool`, *optional*, defaults to `True`):
            Compute METEOR (one jar process for all rounds).
        spice (`bool`, *optional*, defaults to `False`):
            Compute SPICE.
        expected_num_images (`int`, *optional*):
            As in [`compute_caption_metrics`].

    Returns:
        `dict`: the keys of [`compute_caption_metrics`], each the mean over the rounds (`METEOR`/`SPICE` are `None`
        when they could not be computed).

    Raises:
        `ValueError`: an image with fewer than 2 references, or no images.

    Example:

    ```python
    >>> human = human_agreement(
    ...     [
    ...         ["a dog runs on the grass", "a dog is running on grass", "a brown dog runs"],
    ...         ["two cats sleep on a sofa", "two cats sleeping", "cats asleep on a couch"],
    ...     ],
    ...     meteor=False,
    ... )
    >>> round(human["BLEU-1"], 3)
    0.587
    ```
    """
    if isinstance(references, Mapping):
        ids = list(references)
        refs = [_check_references(i, references[i]) for i in ids]
    elif isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"references must be a list or a dict keyed by image id, got {type(references).__name__}")
    else:
        ids = list(range(len(references)))
        refs = [_check_references(i, r) for i, r in zip(ids, references, strict=True)]
    if not ids:
        raise ValueError("no images to score: references is empty")
    too_few = [i for i, r in zip(ids, refs, strict=True) if len(r) < 2]
    if too_few:
        raise ValueError(
            f"human agreement needs at least 2 references per image (one to score, one to score against); "
            f"{len(too_few)} image(s) have fewer: {_describe_ids(too_few)}"
        )
    tokenized = [[ptb_tokenize(r) for r in image_refs] for image_refs in refs]
    num_rounds = min(len(r) for r in tokenized)
    rounds = [([r[k] for r in tokenized], [r[:k] + r[k + 1 :] for r in tokenized]) for k in range(num_rounds)]
    mean_references = sum(len(r) - 1 for r in tokenized) / len(ids)
    messages = _usage_warnings(len(ids), mean_references, expected_num_images)
    scores, problems = _score_rounds(rounds, meteor, spice)
    for message in messages + problems:
        warnings.warn(message, CaptionMetricWarning, stacklevel=2)
    return {**scores, "num_images": len(ids)}
