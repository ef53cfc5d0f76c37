"""Choose decoding defaults by validation: caption a split with a trained model under a grid of generation settings
(beams, length penalty, n-gram blocking, repetition penalty, length limit) and report CIDEr-D with the degeneration
diagnostics of each, beside the references' own. train.py's defaults for --num_beams, --length_penalty,
--no_repeat_ngram_size, --repetition_penalty and --max_new_tokens come from this table (BENCHMARKS.md).

    python bench/decoding_sweep.py --model outputs/synthetic-hard --dataset_format synthetic --synthetic_variant hard \
        --split validation --output outputs/decoding_sweep.json
"""

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captioning.data import add_data_arguments, check_data_arguments, load_splits_from_args
from captioning.evaluation.command import generate_captions
from captioning.evaluation.diagnostics import caption_diagnostics
from captioning.evaluation.metrics import compute_caption_metrics


def numbers(kind):
    def parse(text: str) -> list:
        try:
            return [kind(value) for value in text.split(",")]
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from error

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A trained model folder (train.py's --output_dir).")
    add_data_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="The dataset's seed (train.py's --seed).")
    parser.add_argument("--split", default="validation", choices=("validation", "test"))
    parser.add_argument("--max_images", type=int, default=None)
    parser.add_argument("--num_beams", type=numbers(int), default=[5])
    parser.add_argument("--length_penalty", type=numbers(float), default=[0.6, 1.0])
    parser.add_argument("--no_repeat_ngram_size", type=numbers(int), default=[0, 3, 4])
    parser.add_argument("--repetition_penalty", type=numbers(float), default=[1.0, 1.2])
    parser.add_argument(
        "--max_new_tokens",
        type=numbers(int),
        default=None,
        help="Length limits to try; default: the model's generation_config.",
    )
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--output", default=None, help="Write the table as JSON here.")
    args = parser.parse_args(argv)
    check_data_arguments(args)
    return args


def main(argv=None) -> list[dict]:
    from transformers import AutoModel, AutoProcessor

    args = parse_args(argv)
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    split = load_splits_from_args(args)[args.split]
    if args.max_images is not None:
        split = split.subset(range(min(args.max_images, len(split))))
    limits = args.max_new_tokens or [model.generation_config.max_length - 1]
    rows = []
    grid = itertools.product(
        args.num_beams, args.length_penalty, args.no_repeat_ngram_size, args.repetition_penalty, limits
    )
    for beams, length_penalty, ngram, repetition, limit in grid:
        if beams == 1 and length_penalty != 1.0:
            continue  # length normalisation ranks finished beams; greedy search has none
        settings = {
            "num_beams": beams,
            "length_penalty": length_penalty,
            "no_repeat_ngram_size": ngram,
            "repetition_penalty": repetition,
            "max_new_tokens": limit,
        }
        started = time.perf_counter()
        generated = generate_captions(
            model, processor, split, batch_size=args.batch_size, show_progress=False, **settings, max_length=None
        )
        seconds = time.perf_counter() - started
        scores = compute_caption_metrics(generated.predictions, generated.references, meteor=False)
        diagnostics = caption_diagnostics(generated.predictions, generated.references, generated.truncated)
        rows.append({**settings, **scores, **diagnostics, "seconds": round(seconds, 1)})
        print(
            f"beams {beams} lp {length_penalty} no_repeat {ngram} rep {repetition} max {limit}: "
            f"CIDEr-D {scores['CIDEr-D']:.4f} BLEU-4 {scores['BLEU-4']:.4f} "
            f"rep3 {diagnostics['repeated_3gram']:.3f} trunc {diagnostics['truncated']:.3f} "
            f"len {diagnostics['mean_length']:.2f} (refs {diagnostics['references/mean_length']:.2f}, "
            f"rep3 {diagnostics['references/repeated_3gram']:.3f}) distinct {diagnostics['distinct_captions']:.3f}",
            flush=True,
        )
    best = max(rows, key=lambda row: row["CIDEr-D"])
    print(f"best by CIDEr-D: {json.dumps({key: best[key] for key in (*settings, 'CIDEr-D')})}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"model": args.model, "split": args.split, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
