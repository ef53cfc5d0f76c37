"""BLEU, ROUGE-L and CIDEr-D on PTB-tokenized captions: pycocoevalcap's arithmetic, operation for operation (the same
numbers to 1e-6)."""

import math
from collections import defaultdict


def ngram_counts(words: list[str], n: int) -> dict[tuple[str, ...], int]:
    """bleu_scorer.precook / cider_scorer.precook: counts of all 1..n-grams."""
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def bleu(hypotheses: list[str], references: list[list[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n as pycocoevalcap/bleu/bleu_scorer.py computes it with option "closest".

    Clipped n-gram matches and n-gram counts are summed over the corpus; each hypothesis's effective reference length
    is the closest reference length (the shorter one on a tie); the brevity penalty uses the summed lengths. The
    tiny/small constants are bleu_scorer's (they keep a zero count from dividing by zero).
    """
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * n, [0] * n
    test_length = reference_length = 0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        max_counts: dict[tuple[str, ...], int] = {}
        lengths = []
        for ref in refs:
            words = ref.split()
            lengths.append(len(words))
            for ngram, count in ngram_counts(words, n).items():
                max_counts[ngram] = max(max_counts.get(ngram, 0), count)
        words = hypothesis.split()
        length = len(words)
        test_length += length
        reference_length += min((abs(ref_length - length), ref_length) for ref_length in lengths)[1]
        for k in range(n):
            guess[k] += max(0, length - k)
        for ngram, count in ngram_counts(words, n).items():
            correct[len(ngram) - 1] += min(max_counts.get(ngram, 0), count)
    scores, product = [], 1.0
    for k in range(n):
        product *= float(correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_length + tiny) / (reference_length + small)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (rouge.py's my_lcs, in O(len(b)) memory)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(hypotheses: list[str], references: list[list[str]], beta: float = 1.2) -> float:
    """pycocoevalcap/rouge/rouge.py: per image, F-measure (beta=1.2) of the best precision and the best recall of the
    LCS over the references (maxima taken separately, as rouge.py does), averaged over images. Tokens come from
    ``split(" ")`` as in rouge.py, so an empty caption is one empty token."""
    total = 0.0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        candidate = hypothesis.split(" ")
        precisions, recalls = [], []
        for ref in refs:
            tokens = ref.split(" ")
            lcs = _lcs_length(tokens, candidate)
            precisions.append(lcs / float(len(candidate)))
            recalls.append(lcs / float(len(tokens)))
        precision, recall = max(precisions), max(recalls)
        if precision != 0 and recall != 0:
            total += ((1 + beta**2) * precision * recall) / float(recall + beta**2 * precision)
    return total / len(hypotheses)


def cider_d(hypotheses: list[str], references: list[list[str]], n: int = 4, sigma: float = 6.0) -> float:
    """pycocoevalcap/cider/cider_scorer.py (CIDEr-D): tf-idf n-gram vectors (n = 1..4) whose document frequencies
    come from the references of the images being scored, clipped cosine similarity (min(hyp, ref) * ref), a Gaussian
    penalty on the length difference (sigma=6; cider_scorer's "length" counts bigrams), the mean over n and over the
    references, times 10, averaged over images."""
    document_frequency: dict[tuple[str, ...], float] = defaultdict(float)
    cooked_refs = [[ngram_counts(ref.split(), n) for ref in refs] for refs in references]
    for refs in cooked_refs:
        for ngram in {ngram for ref in refs for ngram in ref}:
            document_frequency[ngram] += 1
    log_num_images = math.log(float(len(references)))

    def vectorize(counts):
        vectors = [{} for _ in range(n)]
        norms = [0.0] * n
        length = 0
        for ngram, term_frequency in counts.items():
            order = len(ngram) - 1
            weight = float(term_frequency) * (log_num_images - math.log(max(1.0, document_frequency.get(ngram, 0.0))))
            vectors[order][ngram] = weight
            norms[order] += weight**2
            if order == 1:  # cider_scorer counts the bigrams as the length (`if n == 1`)
                length += term_frequency
        return vectors, [math.sqrt(norm) for norm in norms], length

    penalty_denominator = 2 * sigma**2
    total = 0.0
    for hypothesis, refs in zip(hypotheses, cooked_refs, strict=True):
        vector, norm, length = vectorize(ngram_counts(hypothesis.split(), n))
        score = [0.0] * n
        for ref in refs:
            ref_vector, ref_norm, ref_length = vectorize(ref)
            delta = float(length - ref_length)
            penalty = math.e ** (-(delta**2) / penalty_denominator)
            for k in range(n):
                value = 0.0
                for ngram, weight in vector[k].items():
                    ref_weight = ref_vector[k].get(ngram, 0.0)
                    value += min(weight, ref_weight) * ref_weight
                if norm[k] != 0 and ref_norm[k] != 0:
                    value /= norm[k] * ref_norm[k]
                score[k] += value * penalty
        total += sum(score) / n / len(refs) * 10.0
    return total / len(hypotheses)
