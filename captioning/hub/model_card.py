"""The model card (README.md) of a captioner shared on the 🤗 Hub: metadata with a model-index built from the run's
metrics.json, usage code that runs, intended use and limits, the training configuration and the run's pictures."""

import json
import math
import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from captioning.evaluation.diagnostics import DIAGNOSTICS, REFERENCES_PREFIX, SHARES

# metrics.json key -> (model-index metric type, extra metric args). Types are the Hub's metric ids.
METRIC_TYPES = {
    "BLEU-1": ("bleu", {"max_order": 1}),
    "BLEU-2": ("bleu", {"max_order": 2}),
    "BLEU-3": ("bleu", {"max_order": 3}),
    "BLEU-4": ("bleu", {"max_order": 4}),
    "METEOR": ("meteor", {}),
    "ROUGE-L": ("rouge", {"rouge_type": "rougeL"}),
    "CIDEr-D": ("cider", {}),
}
# --dataset_format -> (model-index dataset type, readable name, a sentence about it).
DATASETS = {
    "synthetic": (
        "synthetic-scenes",
        "captioner synthetic scenes",
        "Rendered scenes of coloured shapes with five template captions each, built into captioner (not a Hub "
        "dataset). They hold no photographs: this model has never seen a real photo.",
    ),
    "flickr8k": ("flickr8k", "Flickr8k", "8,000 Flickr photos, mostly of people and animals, five captions each."),
    "karpathy": ("karpathy-splits", "Karpathy splits", "Captions and splits in Karpathy's dataset_*.json format."),
    "coco": ("coco", "MS COCO Captions", "Photos of everyday scenes, about five captions each."),
}
# The training arguments a reader looks for first; the card lists every argument below them.
KEY_ARGUMENTS = (
    "preset",
    "encoder",
    "decoder",
    "tokenizer",
    "vocab_size",
    "num_train_epochs",
    "max_train_steps",
    "max_train_minutes",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "num_warmup_steps",
    "weight_decay",
    "label_smoothing",
    "eos_penalty",
    "unfreeze_schedule",
    "encoder_lr_scale",
    "mixed_precision",
    "all_pairs",
    "seed",
)
VISION_NAMES = {"resnet": "ResNet", "vit": "ViT", "convnext": "ConvNeXt", "swin": "Swin"}
POSITIONS = {
    "learned": "learned 1-D positions",
    "sinusoidal_2d": "2-D sinusoidal positions",
    "none": "no added positions",
}
ATTENTIONS = {"bahdanau": "Bahdanau (additive)", "luong": "Luong (multiplicative)", "none": "no"}
DEFAULT_REPO_ID = "your-name/your-captioner"


def read_json(path: Path) -> dict | None:
    """A JSON object from `path`, or None when the file is absent; a sentence naming the file when it is unreadable."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} cannot be read as JSON ({error}); expected the file the training run wrote."
        ) from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a {type(value).__name__}; expected a JSON object.")
    return value


def is_hub_id(name: str | None) -> bool:
    """Whether a model or dataset name reads as a Hub id rather than a folder on the training machine."""
    if not name or name.startswith((".", "/", "~")) or "\\" in name or os.path.isdir(name):
        return False
    parts = name.split("/")
    return len(parts) <= 2 and all(parts)


def count_parameters(folder: Path, weight_files: list[str]) -> int:
    """Parameters stored in the safetensors files, read from their headers (no tensor is loaded). Tied weights are
    stored once; BatchNorm running statistics and integer buffers are not parameters."""
    total = 0
    for name in weight_files:
        with safe_open(str(folder / name), framework="np") as weights:
            for key in weights.keys():  # noqa: SIM118  (safe_open is not iterable)
                tensor = weights.get_slice(key)
                if key.endswith(("running_mean", "running_var")) or not tensor.get_dtype().startswith(("F", "BF")):
                    continue
                total += math.prod(tensor.get_shape())
    return total


def dataset_info(training_args: dict | None, metrics: dict | None) -> dict:
    """What the model was trained and scored on: model-index type and name, a Hub id when there is one, a sentence."""
    args = training_args or {}
    dataset_format = args.get("dataset_format") or (metrics or {}).get("dataset_format")
    if dataset_format == "hf":
        name = args.get("dataset_name") or args.get("data_dir") or "a 🤗 datasets dataset"
        hub_id = name if is_hub_id(args.get("dataset_name")) else None
        where = f"[{name}](https://huggingface.co/datasets/{name}) on the Hub" if hub_id else f"the folder {name}"
        description = f"A 🤗 datasets dataset from {where}."
        return {"type": name, "name": name, "hub_id": hub_id, "description": description}
    if dataset_format in DATASETS:
        type_, name, description = DATASETS[dataset_format]
        if dataset_format == "synthetic" and args.get("synthetic_variant") == "hard":
            type_, name = f"{type_}-hard", f"{name} (hard)"
            description = (
                "Rendered scenes of 2–5 drawn objects of ten kinds (shapes, houses, trees, cars, people, boats, "
                "flowers) on outdoor, indoor or plain backgrounds with noise, blur and JPEG artefacts, five captions "
                "each in five annotator styles, built into captioner (not a Hub dataset). They hold no photographs: "
                "this model has never seen a real photo."
            )
        if dataset_format == "synthetic" and args.get("synthetic_sizes"):
            description += f" Split sizes (train, validation, test): {args['synthetic_sizes']}."
        return {"type": type_, "name": name, "hub_id": None, "description": description}
    return {"type": "unknown", "name": "an unrecorded dataset", "hub_id": None, "description": ""}


def generation_settings(metrics: dict | None, generation_config: dict | None) -> dict:
    """The beam settings the scores were computed with (metrics.json), else the ones saved with the model."""
    if metrics and isinstance(metrics.get("generation"), dict):
        return dict(metrics["generation"])
    generation = generation_config or {}
    settings = {"num_beams": generation.get("num_beams", 1), "length_penalty": generation.get("length_penalty", 1.0)}
    if generation.get("max_new_tokens") is not None:
        settings["max_new_tokens"] = generation["max_new_tokens"]
    elif generation.get("max_length") is not None:
        # train.py saves max_length = the start token + max_new_tokens.
        settings["max_new_tokens"] = generation["max_length"] - 1
    return settings


def test_scores(metrics: dict | None) -> dict[str, float]:
    """The test split's scores from metrics.json, without the ones that were not computed (METEOR without Java)."""
    if not metrics:
        return {}
    scores = metrics.get("test")
    if not isinstance(scores, dict):
        raise ValueError(
            "metrics.json has no 'test' object of scores; expected the file train.py writes after scoring the test "
            "split (or remove it to push the model as not evaluated)."
        )
    return {k: v for k, v in scores.items() if k != "num_images" and isinstance(v, (int, float)) and v is not None}


def eval_results(metrics: dict, dataset: dict, generation: dict) -> list[EvalResult]:
    split = metrics.get("split", "test")
    results = []
    for key, value in test_scores(metrics).items():
        metric_type, metric_args = METRIC_TYPES.get(key, (key.lower(), {}))
        results.append(
            EvalResult(
                task_type="image-text-to-text",
                task_name="Image Captioning",
                dataset_type=dataset["type"],
                dataset_name=dataset["name"],
                dataset_split=split,
                metric_type=metric_type,
                metric_name=f"{key} ({split}, beam {generation.get('num_beams', 1)})",
                metric_value=round(float(value), 4),
                metric_args={**metric_args, **generation},
            )
        )
    return results


def usage_snippet(repo_id: str, generation: dict) -> str:
    """Python that loads the model from the Hub with only torch, transformers and Pillow installed, and captions."""
    beam_args = ", ".join(f"{k}={v!r}" for k, v in generation.items())
    return f"""```python
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model_id = "{repo_id}"
model = AutoModelForImageTextToText.from_pretrained(model_id, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)

image = Image.new("RGB", (320, 240), "skyblue")  # your picture: Image.open("photo.jpg")
inputs = processor(images=[image], return_tensors="pt")
with torch.no_grad():
    ids = model.generate(**inputs, {beam_args})
print(processor.batch_decode(ids, skip_special_tokens=True))

# The same through the pipeline: text="" captions; a prefix such as "a photo of" is continued.
from transformers import pipeline

captioner = pipeline("image-text-to-text", model=model_id, trust_remote_code=True)
print(captioner(images=image, text="", generate_kwargs={{"num_beams": {generation.get("num_beams", 1)!r}}}))
```"""


def architecture_lines(config: dict, parameters: int | None) -> list[str]:
    vision = config.get("vision_config") or {}
    vision_type = vision.get("model_type", "unknown")
    vision_name = VISION_NAMES.get(vision_type, vision_type)
    vision_source = config.get("vision_model_name_or_path")
    if is_hub_id(vision_source):
        origin = f"initialised from [{vision_source}](https://huggingface.co/{vision_source})"
    elif vision_source:
        origin = f"initialised from {vision_source}"
    else:
        origin = "trained from random initialisation"
    decoder_type = config.get("decoder_type", "transformer")
    decoder_source = config.get("decoder_model_name_or_path")
    if decoder_type == "gpt2":
        text = config.get("text_config") or {}
        decoder = f"GPT-2 with cross-attention ({text.get('n_layer', config.get('decoder_layers'))} layers)"
        if decoder_source:
            decoder += f", initialised from {decoder_source}"
    elif decoder_type == "lstm":
        attention = ATTENTIONS.get(config.get("attention"), config.get("attention"))
        decoder = (
            f"Show, Attend and Tell {config.get('cell', 'lstm').upper()} decoder with {attention} attention "
            f"(hidden size {config.get('rnn_hidden_size')})"
        )
    else:
        decoder = (
            f"{config.get('decoder_layers')}-layer Transformer decoder ({config.get('decoder_attention_heads')} heads, "
            f"width {config.get('d_model')})"
        )
    lines = [
        f"- **Vision encoder**: {vision_name}, {origin}; images resized to {config.get('image_size')}×"
        f"{config.get('image_size')}.",
        f"- **Bridge**: image features flattened to a sequence, "
        f"{POSITIONS.get(config.get('position_embedding_type'), config.get('position_embedding_type'))}, projected "
        f"to width {config.get('d_model')}, then {config.get('encoder_layers', 0)} Transformer encoder layer(s).",
        f"- **Decoder**: {decoder}; vocabulary of {config.get('vocab_size')} tokens.",
    ]
    if parameters:
        size = f"{parameters / 1e6:.3g}M" if parameters >= 100_000 else f"{parameters:,}"
        lines.append(f"- **Parameters**: {size}.")
    return lines


def results_section(metrics: dict | None, dataset: dict, generation: dict) -> str:
    if not metrics:
        return (
            "**This model was not evaluated**: the folder it was pushed from had no metrics.json. Score it with "
            "`captioner evaluate --model MODEL_FOLDER --dataset_format ... --split test` before "
            "trusting its captions."
        )
    scores = test_scores(metrics)
    human = metrics.get("human_agreement") or {}
    split = metrics.get("split", "test")
    lines = [
        f"Scored on {metrics.get('num_images', 'the')} {split} images of {dataset['name']} with beam search "
        f"({', '.join(f'{k}={v}' for k, v in generation.items())}). Human agreement scores each reference caption "
        "against the other references of its image: the level a model that writes like people would reach.",
        "",
        "| metric | this model | human agreement |",
        "|---|---|---|",
    ]
    for key, value in scores.items():
        reference = human.get(key)
        lines.append(
            f"| {key} | {value:.4f} | {reference:.4f} |" if reference is not None else f"| {key} | {value:.4f} | n/a |"
        )
    if "METEOR" not in scores and "METEOR" in (metrics.get("test") or {}):
        lines += ["", "METEOR was not computed (its scorer needs Java)."]
    return "\n".join(lines + diagnostics_lines(metrics))


def diagnostics_lines(metrics: dict) -> list[str]:
    """The test captions' degeneration diagnostics beside the references' (metrics.json's "test_diagnostics"; none
    for a run that did not record them)."""
    diagnostics = metrics.get("test_diagnostics")
    if not isinstance(diagnostics, dict):
        return []

    def shown(key: str) -> str:
        value = diagnostics.get(key)
        if value is None:
            return "n/a"
        if key.removeprefix(REFERENCES_PREFIX) in SHARES:
            return f"{100 * value:.1f}%"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = [
        "",
        "How much the same captions degenerate (repeat themselves, run to the length limit, say the same for many "
        "images), on the words the metrics score, beside the reference captions (each reference counted as one "
        "caption):",
        "",
        "| diagnostic | this model | references |",
        "|---|---|---|",
    ]
    for key, description in DIAGNOSTICS.items():
        if key in diagnostics:
            lines.append(f"| {description} (`{key}`) | {shown(key)} | {shown(REFERENCES_PREFIX + key)} |")
    return lines


def training_section(training_args: dict | None, metrics: dict | None, dataset: dict) -> str:
    if not training_args and not metrics:
        return "How this model was trained was not recorded: the folder it was pushed from has no training_args.json."
    lines = [
        f"Trained with captioner's `train.py` (Accelerate) on {dataset['name']}. {dataset['description']}".strip()
    ]
    if metrics:
        facts = []
        if metrics.get("optimizer_steps") is not None:
            facts.append(f"{metrics['optimizer_steps']} optimizer steps")
        if metrics.get("train_seconds") is not None:
            seconds = metrics["train_seconds"]
            facts.append(f"{seconds:.3g} s of training" if seconds < 120 else f"{seconds / 60:.0f} min of training")
        if metrics.get("best_validation_cider") is not None:
            facts.append(f"best validation CIDEr-D {metrics['best_validation_cider']:.4f} (the checkpoint kept)")
        if facts:
            summary = "; ".join(facts)
            lines[0] += f" {summary[0].upper()}{summary[1:]}."
    if not training_args:
        lines += ["", "The training arguments were not saved with this model (no training_args.json)."]
        return "\n".join(lines)
    shown = [k for k in KEY_ARGUMENTS if training_args.get(k) is not None]
    lines += ["", "| argument | value |", "|---|---|"]
    lines += [f"| `{k}` | `{training_args[k]}` |" for k in shown]
    lines += [
        "",
        "<details><summary>Every argument of the run (training_args.json)</summary>",
        "",
        "```json",
        json.dumps(training_args, indent=2, sort_keys=True),
        "```",
        "",
        "</details>",
    ]
    return "\n".join(lines)


def limitations_section(config: dict, dataset: dict, evaluated: bool) -> str:
    lines = [
        "- **Intended use**: short English descriptions of images like the ones it was trained on, for research, "
        "teaching, and drafts of alt text that a person reviews.",
        f"- **Domain**: it has seen only {dataset['name']}; on other kinds of images its captions degrade, often "
        "while staying fluent and confident."
        if dataset["type"] != "unknown"
        else "- **Domain**: its training data was not recorded; expect its captions to degrade on images unlike it.",
        f"- **Vocabulary**: {config.get('vocab_size')} tokens; words rare in its training captions are rare in its "
        "own.",
        "- **Not for**: decisions about people, surveillance, identifying individuals, or any use where a wrong "
        "caption causes harm. Captioning datasets carry their annotators' biases (for example about gender), and "
        "models repeat them.",
    ]
    if not evaluated:
        lines.append("- **Unevaluated**: no test scores were recorded, so its quality is unknown.")
    return "\n".join(lines)


def build_model_card(
    folder: str | Path,
    repo_id: str = DEFAULT_REPO_ID,
    weight_files: list[str] | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """
    The model card of a captioner model folder, from its config.json, generation_config.json and, when present, the
    run's metrics.json, training_args.json, samples.png and training_curves.png.

    Args:
        folder (`str` or `Path`): a captioner model folder (train.py's output, or `save_pretrained`).
        repo_id (`str`): the Hub repository the card is written for (its usage code loads from it).
        weight_files (`list[str]`, *optional*): the safetensors files to count parameters in; default
            `model.safetensors` when present.
        license (`str`): the card's license id.

    Returns:
        [`huggingface_hub.ModelCard`]: the card; its YAML has been parsed back, so an invalid model-index raises a
        `ValueError` here rather than on the Hub.
    """
    folder = Path(folder)
    config = read_json(folder / "config.json") or {}
    metrics = read_json(folder / "metrics.json")
    training_args = read_json(folder / "training_args.json")
    generation = generation_settings(metrics, read_json(folder / "generation_config.json"))
    dataset = dataset_info(training_args, metrics)
    if weight_files is None:
        weight_files = ["model.safetensors"] if (folder / "model.safetensors").is_file() else []
    model_name = repo_id.split("/")[-1]
    results = eval_results(metrics, dataset, generation) if metrics else []
    base_models = [
        config[k] for k in ("vision_model_name_or_path", "decoder_model_name_or_path") if is_hub_id(config.get(k))
    ]
    vision_type = (config.get("vision_config") or {}).get("model_type")
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=[
            t for t in ("image-captioning", "captioner", "custom_code", vision_type, config.get("decoder_type")) if t
        ],
        datasets=[dataset["hub_id"]] if dataset["hub_id"] else None,
        base_model=base_models or None,
        metrics=sorted({r.metric_type for r in results}) or None,
        model_name=model_name if results else None,
        eval_results=results or None,
    )
    sections = [
        f"# {model_name}",
        "An image-captioning model made with the `captioner` package: a vision encoder feeds a caption decoder "
        "through a small bridge. Its code travels in this repository, so it loads with transformers' Auto classes "
        "and `trust_remote_code=True`; the `captioner` package is not needed.",
        "\n".join(architecture_lines(config, count_parameters(folder, weight_files) if weight_files else None)),
        "## Usage",
        "Needs `pip install torch transformers pillow`. The beam settings below are the ones the scores were "
        "computed with.",
        usage_snippet(repo_id, generation),
        "## Results",
        results_section(metrics, dataset, generation),
    ]
    if (folder / "samples.png").is_file():
        sections.append("![Validation images with the model's caption and a reference caption](samples.png)")
    sections += ["## Intended use and limitations", limitations_section(config, dataset, evaluated=bool(results))]
    sections += ["## Training", training_section(training_args, metrics, dataset)]
    if (folder / "training_curves.png").is_file():
        sections.append("![Training loss and validation CIDEr-D](training_curves.png)")
    if base_models:
        sections.append(f"The base models ({', '.join(base_models)}) keep their own licenses.")
    body = "\n\n".join(sections) + "\n"
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


__all__ = ["build_model_card", "dataset_info", "eval_results", "generation_settings", "usage_snippet"]
