"""Captions generated for a dataset split and scored as the field reports them; also the evaluation command:
`python -m captioning.evaluation --model DIR --dataset_format F [--data_dir D] --split test --output_dir OUT`."""

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from captioning.data import add_data_arguments, check_data_arguments, load_splits_from_args


class EvalCollator:
    """Images and all references of each item; no labels (the captions scored come from generate())."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, items: list[dict | None]) -> dict:
        kept = [item for item in items if item is not None]
        batch = {
            "image_ids": [item["image_id"] for item in kept],
            "references": [list(item["captions"]) for item in kept],
            "num_dropped": len(items) - len(kept),
        }
        if kept:
            batch["pixel_values"] = self.processor(images=[item["image"] for item in kept])["pixel_values"]
        return batch


@torch.no_grad()
def generate_captions(
    model,
    processor,
    dataset,
    accelerator=None,
    batch_size: int = 32,
    num_workers: int = 0,
    show_progress: bool = True,
    **generation_kwargs,
) -> tuple[dict[str, str], dict[str, list[str]], int]:
    """
    Caption every image of `dataset` with `model.generate(**generation_kwargs)`.

    Returns `(predictions, references, num_dropped)`: image id → caption, image id → its references, and how many
    images could not be decoded. With several processes, each captions its shard and the results are gathered
    without duplicates (gather_for_metrics drops the padding of the last batch).
    """
    unwrapped = model
    if accelerator is not None:
        unwrapped = accelerator.unwrap_model(model)
        if accelerator.num_processes > 1:
            # A disjoint shard per process (not accelerator.prepare, which would register one more dataloader in
            # every checkpoint): each image is captioned exactly once.
            shard = range(accelerator.process_index, len(dataset), accelerator.num_processes)
            dataset = torch.utils.data.Subset(dataset, list(shard))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=EvalCollator(processor), num_workers=num_workers)
    was_training = unwrapped.training
    unwrapped.eval()
    device = next(unwrapped.parameters()).device
    predictions, references, dropped = {}, {}, 0
    main = accelerator is None or accelerator.is_main_process
    for batch in tqdm(loader, desc="generating captions", disable=not (show_progress and main), leave=False):
        dropped += batch["num_dropped"]
        if "pixel_values" not in batch:
            continue
        ids = unwrapped.generate(batch["pixel_values"].to(device), **generation_kwargs)
        captions = processor.batch_decode(ids, skip_special_tokens=True)
        for image_id, caption, refs in zip(batch["image_ids"], captions, batch["references"], strict=True):
            predictions[image_id] = caption
            references[image_id] = refs
    unwrapped.train(was_training)
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        shards = gather_object([(predictions, references, dropped)])
        predictions = {k: v for shard in shards for k, v in shard[0].items()}
        references = {k: v for shard in shards for k, v in shard[1].items()}
        dropped = sum(shard[2] for shard in shards)
    return predictions, references, dropped


def score_captions(predictions: dict[str, str], references: dict[str, list[str]], expected_num_images: int) -> dict:
    from captioning.metrics import compute_caption_metrics

    return compute_caption_metrics(predictions, references, expected_num_images=expected_num_images)


def write_predictions(path: Path, predictions: dict[str, str], references: dict[str, list[str]]) -> None:
    rows = [{"image_id": i, "caption": c, "references": references[i]} for i, c in predictions.items()]
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Score a saved captioner on a dataset split.")
    parser.add_argument("--model", required=True, help="A saved model folder (or hub id) with its processor.")
    add_data_arguments(parser)
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--output_dir", required=True, help="Where metrics.json and predictions.json go.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_beams", type=int, default=None, help="Default: the model's generation_config.")
    parser.add_argument("--length_penalty", type=float, default=None)
    parser.add_argument("--max_new_tokens", type=int, default=None)
    parser.add_argument("--max_samples", type=int, default=None, help="Score only the first N images (a subset).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the dataset split (synthetic, random splits).")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    check_data_arguments(args)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from transformers import AutoModel, AutoProcessor

    import modeling_captioner  # noqa: F401  (registers the Auto classes)

    model = AutoModel.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    splits = load_splits_from_args(args)
    dataset = splits[args.split]
    expected = len(dataset)
    if args.max_samples is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.max_samples, len(dataset))))
    generation = {
        k: v
        for k, v in {
            "num_beams": args.num_beams,
            "length_penalty": args.length_penalty,
            "max_new_tokens": args.max_new_tokens,
        }.items()
        if v is not None
    }
    predictions, references, dropped = generate_captions(
        model, processor, dataset, batch_size=args.batch_size, **generation
    )
    metrics = score_captions(predictions, references, expected_num_images=expected)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "model": str(args.model),
        "dataset_format": args.dataset_format,
        "split": args.split,
        "generation": {**model.generation_config.to_diff_dict(), **generation},
        "metrics": metrics,
        "images_dropped": dropped,
    }
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    write_predictions(output_dir / "predictions.json", predictions, references)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {output_dir / 'metrics.json'} and {output_dir / 'predictions.json'}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
