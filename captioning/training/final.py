"""After training: the best model scored on the test split, beside the split's human agreement; metrics.json,
predictions.json, a picture of sample captions and the training curves."""

import json
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor

from captioning.data.web.splits import STREAM_FORMATS
from captioning.data.web.streams import sum_reports
from captioning.evaluation.command import generate_captions, write_predictions
from captioning.evaluation.diagnostics import caption_diagnostics, format_diagnostics
from captioning.evaluation.metrics import compute_caption_metrics, human_agreement
from captioning.training.optimization import global_batch_size
from captioning.training.reporting import save_samples, save_training_curves


def final_evaluation(args, accelerator, splits: dict, state: dict, train_seconds: float) -> dict:
    """Score the best model (saved in args.output_dir) on the test split; write metrics.json, predictions.json,
    samples.png and the curves. Returns the report (empty on processes other than the main one)."""
    output_dir = Path(args.output_dir)
    accelerator.wait_for_everyone()
    best = AutoModel.from_pretrained(output_dir).to(accelerator.device)
    processor = AutoProcessor.from_pretrained(output_dir)
    test = splits["test"]
    predictions, references, dropped, truncated = generate_captions(
        best, processor, test, accelerator, batch_size=args.per_device_eval_batch_size, num_workers=args.num_workers
    )
    report = {}
    if accelerator.is_main_process:
        meteor = not args.no_meteor
        test_metrics = compute_caption_metrics(predictions, references, expected_num_images=len(test), meteor=meteor)
        # Human agreement scores each reference against the others: it needs two or more per image.
        agreement = None
        if min(len(refs) for refs in references.values()) >= 2:
            agreement = human_agreement(list(references.values()), meteor=meteor)
        diagnostics = caption_diagnostics(predictions, references, truncated)
        scores = {"num_images": len(predictions), "test": test_metrics, "diagnostics": diagnostics}
        report = metrics_report(
            args, accelerator, splits, state, train_seconds, agreement=agreement, dropped=dropped, **scores
        )
        (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        write_predictions(output_dir / "predictions.json", predictions, references)
        save_pictures(best, processor, splits["validation"], state["history"], output_dir, accelerator.device)
        human = f"{agreement['CIDEr-D']:.4f}" if agreement else "n/a: one reference per image"
        print(f"test captions: {format_diagnostics(diagnostics)}")
        print(
            f"test CIDEr-D {test_metrics['CIDEr-D']:.4f} (human agreement {human}), "
            f"BLEU-4 {test_metrics['BLEU-4']:.4f}; model: {output_dir}; metrics: {output_dir / 'metrics.json'}; "
            f"pictures: {output_dir / 'samples.png'}, {output_dir / 'training_curves.png'}"
        )
    accelerator.wait_for_everyone()  # all processes end together, once the main one has written everything
    accelerator.end_training()
    return report


def metrics_report(
    args, accelerator, splits, state, train_seconds, *, num_images, test, diagnostics, agreement, dropped
) -> dict:
    """metrics.json: the test scores and how they were made (generation, steps, batch, data skipped and dropped)."""
    report = {
        "dataset_format": args.dataset_format,
        "split": "test",
        "num_images": num_images,
        "generation": {
            "num_beams": args.num_beams,
            "length_penalty": args.length_penalty,
            "max_new_tokens": args.max_new_tokens,
            "no_repeat_ngram_size": args.no_repeat_ngram_size,
            "repetition_penalty": args.repetition_penalty,
        },
        "test": test,
        # Beside "test", not in it: the model card's model-index takes every number of "test" as a score.
        "test_diagnostics": diagnostics,
        "human_agreement": agreement,
        "best_validation_cider": state["best_cider"],
        "optimizer_steps": state["completed_steps"],
        "num_processes": accelerator.num_processes,
        "global_train_batch_size": global_batch_size(args, accelerator),
        "train_seconds": round(train_seconds, 1),
        "skipped": {name: split.skipped.as_dict() for name, split in splits.items()},
        "images_dropped_while_training": state["dropped"],
        "images_dropped_at_test": dropped,
    }
    if args.dataset_format in STREAM_FORMATS:
        # Training: every epoch's report and their sum; validation and test were fetched once.
        report["downloads"] = {
            "train": sum_reports(state["downloads"]),
            "epochs": state["downloads"],
            **{name: splits[name].downloads.as_dict() for name in ("validation", "test")},
        }
    return report


def save_pictures(model, processor, validation, history: list[dict], output_dir: Path, device) -> None:
    """samples.png (the first validation images with generated and reference captions) and training_curves.png."""
    shown = [item for item in (validation[i] for i in range(min(8, len(validation)))) if item is not None]
    if shown:
        pixel_values = processor(images=[item["image"] for item in shown])["pixel_values"].to(device)
        with torch.no_grad():
            generated = processor.batch_decode(model.generate(pixel_values), skip_special_tokens=True)
        save_samples(
            [item["image"] for item in shown],
            generated,
            [item["captions"] for item in shown],
            output_dir / "samples.png",
        )
    save_training_curves(history, output_dir / "training_curves.png")
