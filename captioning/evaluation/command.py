"""Captions generated for a dataset split and scored as the field reports them; also the evaluation command:
`captioner evaluate --model DIR --dataset_format F [--data_dir D] --split test --output_dir OUT`."""

import argparse
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

import PIL.Image
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler
from tqdm.auto import tqdm

from captioning.data.loading import add_data_arguments, check_data_arguments, load_splits_from_args
from captioning.data.web.splits import STREAM_FORMATS
from captioning.evaluation.diagnostics import caption_diagnostics, format_diagnostics
from captioning.evaluation.metrics import compute_caption_metrics


class EvalCollator:
    """Images and all references of each item; no labels (the captions scored come from generate())."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, items: list[dict | None]) -> dict:
        kept = [item for item in items if item is not None]
        batch = {
            "image_ids": [item["image_id"] for item in kept],
            "references": [list(item["captions"]) for item in kept],
            # Where each image sits in its dataset, to put captions gathered from several processes back in order.
            "positions": [item.get("index", 0) for item in kept],
            "num_dropped": len(items) - len(kept),
        }
        if kept:
            batch["pixel_values"] = self.processor(images=[item["image"] for item in kept])["pixel_values"]
        return batch


class GeneratedCaptions(NamedTuple):
    """
    What [`generate_captions`] returns; unpacks as `predictions, references, num_dropped, truncated`.

    Attributes:
        predictions (`dict[str, str]`): image id → generated caption, in dataset order.
        references (`dict[str, list[str]]`): image id → its reference captions.
        num_dropped (`int`): images that could not be decoded (not captioned).
        truncated (`dict[str, bool]` or `None`): image id → whether its caption ended without the EOS token, i.e. was
            cut at the length limit; `None` when the model has no EOS token to look for.
    """

    predictions: dict[str, str]
    references: dict[str, list[str]]
    num_dropped: int
    truncated: dict[str, bool] | None


def _ended_without_eos(ids: torch.Tensor, eos_token_id: int | list[int]) -> list[bool]:
    """Per generated row, whether no EOS follows its first position (the start token, which is EOS for GPT-2). A row
    that ended early and was padded holds its EOS, also where padding is EOS."""
    eos = torch.tensor(eos_token_id, device=ids.device).reshape(-1)
    return (~torch.isin(ids[:, 1:], eos).any(dim=1)).tolist()


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
) -> GeneratedCaptions:
    """
    Caption every image of `dataset` with `model.generate(**generation_kwargs)`.

    Returns a [`GeneratedCaptions`], `(predictions, references, num_dropped, truncated)`: image id → caption, image
    id → its references, how many images could not be decoded, and image id → whether generation stopped at the
    length limit without EOS. With several processes (`accelerator`), each captions its share and every process gets
    all the results, each image exactly once.
    """
    unwrapped = model
    num_processes = 1
    if accelerator is not None:
        unwrapped = accelerator.unwrap_model(model)
        num_processes = accelerator.num_processes
    collator = EvalCollator(processor)
    if num_processes > 1:
        # Accelerate's sharding without accelerator.prepare, which would add this loader to every checkpoint. All
        # processes run the same number of batches (the last ones topped up with images from the start), as
        # generate() needs where each of its steps gathers sharded weights (FSDP, DeepSpeed ZeRO-3).
        from accelerate.data_loader import BatchSamplerShard

        batch_size = max(1, min(batch_size, math.ceil(len(dataset) / num_processes)))
        batches = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
        shard = BatchSamplerShard(batches, num_processes, accelerator.process_index, even_batches=True)
        loader = DataLoader(dataset, batch_sampler=shard, collate_fn=collator, num_workers=num_workers)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator, num_workers=num_workers)
    was_training = unwrapped.training
    unwrapped.eval()
    device = next(unwrapped.parameters()).device
    generation_config = generation_kwargs.get("generation_config") or unwrapped.generation_config
    eos_token_id = generation_kwargs.get("eos_token_id", generation_config.eos_token_id)
    predictions, references, positions, truncated = {}, {}, {}, {}
    main = accelerator is None or accelerator.is_main_process
    for batch in tqdm(loader, desc="generating captions", disable=not (show_progress and main), leave=False):
        pixel_values = batch.get("pixel_values")
        if pixel_values is None and num_processes == 1:
            continue
        if pixel_values is None:
            # Every image of this process's batch failed to decode: it still runs generate() in step with the
            # others, on a black image whose caption is dropped.
            pixel_values = processor(images=[PIL.Image.new("RGB", (32, 32))])["pixel_values"]
        ids = unwrapped.generate(pixel_values.to(device, unwrapped.dtype), **generation_kwargs)
        # [:0] for a black stand-in image.
        captions = processor.batch_decode(ids, skip_special_tokens=True)[: len(batch["image_ids"])]
        for image_id, caption, refs, position in zip(
            batch["image_ids"], captions, batch["references"], batch["positions"], strict=True
        ):
            predictions[image_id], references[image_id], positions[image_id] = caption, refs, position
        if eos_token_id is not None:
            # strict=False: a black stand-in image's row has no image id.
            truncated.update(zip(batch["image_ids"], _ended_without_eos(ids, eos_token_id), strict=False))
    unwrapped.train(was_training)
    if num_processes > 1:
        from accelerate.utils import gather_object

        # Merged by image id rather than trimmed by position (gather_for_metrics): the top-up images come back
        # twice with the same caption and collapse, however many undecodable images shifted a batch.
        for shard in gather_object([(predictions, references, positions, truncated)]):
            for merged, part in zip((predictions, references, positions, truncated), shard, strict=True):
                merged.update(part)
        # In dataset order, as one process writes them.
        order = sorted(predictions, key=lambda image_id: positions[image_id])
        predictions = {image_id: predictions[image_id] for image_id in order}
        references = {image_id: references[image_id] for image_id in order}
        truncated = {image_id: truncated[image_id] for image_id in order if image_id in truncated}
    # Each image was seen at least once (ids are unique within a split), so whatever is missing failed to decode.
    return GeneratedCaptions(
        predictions, references, len(dataset) - len(predictions), None if eos_token_id is None else truncated
    )


def score_captions(predictions: dict[str, str], references: dict[str, list[str]], expected_num_images: int) -> dict:

    return compute_caption_metrics(predictions, references, expected_num_images=expected_num_images)


def write_predictions(path: Path, predictions: dict[str, str], references: dict[str, list[str]]) -> None:
    rows = [{"image_id": i, "caption": c, "references": references[i]} for i, c in predictions.items()]
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `evaluate` subcommand's options."""
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
    parser.set_defaults(run=run)


def check_arguments(args: argparse.Namespace) -> None:
    """Rejects flag combinations that cannot be scored, with a sentence (SystemExit)."""
    check_data_arguments(args)
    if args.dataset_format in STREAM_FORMATS and args.split == "train":
        raise SystemExit(
            f"--dataset_format {args.dataset_format} streams its train split; score --split validation or test (held "
            "out of --data_files, or given by --validation_files / --test_files)."
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="captioner evaluate", description="Score a saved captioner on a dataset split."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_arguments(args)
    return args


def main(argv=None) -> dict:
    """Runs the evaluation; returns the report written to metrics.json."""
    return evaluate(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """`captioner evaluate`: the parser was the subcommand's, so the flags are checked here."""
    check_arguments(args)
    evaluate(args)
    return 0


def evaluate(args: argparse.Namespace) -> dict:
    """Scores `args.model` on `args.split` and writes metrics.json and predictions.json into `args.output_dir`; `args`
    come checked (parse_args, run)."""
    from transformers import AutoModel, AutoProcessor

    import modeling_captioner  # noqa: F401  (registers the Auto classes)

    model = AutoModel.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    if args.dataset_format in STREAM_FORMATS:
        # Downloaded (or read from the shards) once, shrunk to the model's input size as in training.
        side = max(processor.image_processor.size.get(key, 0) for key in ("height", "width", "shortest_edge"))
        splits = load_splits_from_args(args, image_side=side or None, splits=(args.split,))
    else:
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
    predictions, references, dropped, truncated = generate_captions(
        model, processor, dataset, batch_size=args.batch_size, **generation
    )
    metrics = score_captions(predictions, references, expected_num_images=expected)
    diagnostics = caption_diagnostics(predictions, references, truncated)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "model": str(args.model),
        "dataset_format": args.dataset_format,
        "split": args.split,
        "generation": {**model.generation_config.to_diff_dict(), **generation},
        "metrics": metrics,
        "diagnostics": diagnostics,
        "images_dropped": dropped,
    }
    if hasattr(splits[args.split], "downloads"):
        report["downloads"] = splits[args.split].downloads.as_dict()
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    write_predictions(output_dir / "predictions.json", predictions, references)
    print(json.dumps(metrics, indent=2))
    print(f"diagnostics: {format_diagnostics(diagnostics)}", file=sys.stderr)  # stdout stays one JSON object
    print(f"wrote {output_dir / 'metrics.json'} and {output_dir / 'predictions.json'}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
