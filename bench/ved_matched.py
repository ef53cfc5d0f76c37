"""Matched models and shared pieces for bench_vs_ved.py: captioner (GPT-2 decoder, or its own Transformer decoder at
equal parameter count) and 🤗 VisionEncoderDecoderModel built from the very same ViT and GPT-2 configs, one
tokenizer, one synthetic dataset, one training step, one timer."""

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from transformers import GPT2LMHeadModel, VisionEncoderDecoderModel, ViTModel, get_scheduler

from captioning.data import load_caption_splits
from captioning.training.collator import CaptionCollator
from captioning.training.loop import step_inputs
from captioning.training.losses import caption_loss
from captioning.training.unfreezing import build_adamw
from modeling_captioner import (
    CaptionerConfig,
    CaptionerForConditionalGeneration,
    CaptionerProcessor,
    build_image_processor,
)
from tokenization import build_tokenizer

CAPTIONER, TRANSFORMER, VED = "captioner", "captioner-transformer", "ved"
MODELS = (CAPTIONER, TRANSFORMER, VED)
SPECIAL_TOKENS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


@dataclass
class Bench:
    """What every part of the benchmark shares: data, tokenizer, processor and the captioner config whose
    `vision_config` and `text_config` VisionEncoderDecoderModel is built from too."""

    preset: str
    splits: dict
    tokenizer: Any
    processor: CaptionerProcessor
    config: CaptionerConfig
    device: torch.device

    @property
    def fp16(self) -> bool:
        # The "equal settings": fp32 on CPU (CPU fp16 kernels are slow or missing), fp16 autocast on a GPU.
        return self.device.type == "cuda"

    @property
    def precision(self) -> str:
        """The eager rows' precision: fp16 autocast (with loss scaling) on a GPU, fp32 on a CPU."""
        return "fp16" if self.fp16 else "fp32"

    @property
    def fast_precision(self) -> str:
        """The fast rows' precision: bf16 on a GPU with bf16 arithmetic (no loss scaling), fp16 on an older one, fp32
        on a CPU (as train.py's default_mixed_precision picks)."""
        if self.device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"

    def collator(self, captions_per_image: int = 1) -> CaptionCollator:
        return CaptionCollator(
            self.processor, max_length=self.config.max_position_embeddings, captions_per_image=captions_per_image
        )

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16)


def build_bench(preset: str, sizes: tuple[int, int, int], device: str) -> Bench:
    splits = load_caption_splits("synthetic", sizes=sizes)
    tokenizer = build_tokenizer(splits["train"].all_captions(), vocab_size=1000)
    # VisionEncoderDecoderModel hands the ViT's output straight to GPT-2's cross-attention when the widths match; so
    # does captioner with no encoder layers and feature_projection="none" (the ViT brings its own positions, so
    # from_preset sets position_embedding_type="none"): the same parameters, to the last one.
    config = CaptionerConfig.from_preset(
        preset, encoder="vit", decoder="gpt2", tokenizer=tokenizer, encoder_layers=0, feature_projection="none"
    )
    processor = CaptionerProcessor(build_image_processor(config), tokenizer)
    return Bench(preset, splits, tokenizer, processor, config, torch.device(device))


def transformer_config(bench: Bench) -> CaptionerConfig:
    """captioner's own decoder with GPT-2's depth, heads, width, feed-forward width and positions: both are pre-LN
    blocks of self-attention, cross-attention and MLP with biases and tied embeddings, so the parameter counts match
    (exactly for the presets here)."""
    text = bench.config.text_config
    return CaptionerConfig.from_preset(
        bench.preset,
        encoder="vit",
        decoder="transformer",
        tokenizer=bench.tokenizer,
        encoder_layers=0,
        feature_projection="none",
        d_model=text.n_embd,
        decoder_layers=text.n_layer,
        decoder_attention_heads=text.n_head,
        decoder_ffn_dim=text.n_inner or 4 * text.n_embd,
        max_position_embeddings=text.n_positions,
    )


def build_ved(config: CaptionerConfig) -> VisionEncoderDecoderModel:
    """VisionEncoderDecoderModel from copies of captioner's ViT and GPT-2 configs (GPT-2 already with
    add_cross_attention and is_decoder), with captioner's special tokens for training and generate()."""
    encoder = ViTModel(copy.deepcopy(config.vision_config), add_pooling_layer=False)
    decoder = GPT2LMHeadModel(copy.deepcopy(config.text_config))
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    for name in SPECIAL_TOKENS:
        setattr(model.config, name, getattr(config, name))
        setattr(model.generation_config, name, getattr(config, name))
    return model


def build_model(name: str, bench: Bench, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if name == CAPTIONER:
        model = CaptionerForConditionalGeneration(copy.deepcopy(bench.config))
    elif name == TRANSFORMER:
        model = CaptionerForConditionalGeneration(transformer_config(bench))
    elif name == VED:
        model = build_ved(bench.config)
    else:
        raise ValueError(f"Unknown model {name!r}; expected one of {MODELS}.")
    return model.to(bench.device)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of the whole model, the vision backbone, the decoder (lm_head tied to its embeddings) and what
    lies between (captioner's bridge; nothing in VisionEncoderDecoderModel when the widths are equal)."""
    backbone = model.encoder.backbone if hasattr(model.encoder, "backbone") else model.encoder
    total = sum(p.numel() for p in model.parameters())
    counts = {
        "total": total,
        "vision": sum(p.numel() for p in backbone.parameters()),
        "decoder": sum(p.numel() for p in model.decoder.parameters()),
    }
    counts["bridge"] = total - counts["vision"] - counts["decoder"]
    return counts


def to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TrainingRun:
    """One model's optimizer and training step, taken as train.py takes it for every model alike: step_inputs →
    forward (fp16 autocast on a GPU) → caption_loss (label smoothing 0.1) → backward → clip to norm 1 → fused AdamW.
    `cache` is captioner's feature cache while its backbone is frozen; `precision` ("fp16", "bf16" or "fp32")
    overrides the bench's, and only fp16 scales the loss."""

    def __init__(
        self,
        model,
        bench: Bench,
        learning_rate: float = 1e-3,
        warmup_steps: int | None = None,
        cache=None,
        precision: str | None = None,
    ):
        self.model, self.bench, self.cache = model, bench, cache
        self.precision = precision or bench.precision
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        # train.py's AdamW and the Trainer's default (VED's training scripts): fused where the device has the kernel.
        self.optimizer = build_adamw(self.parameters, bench.device, lr=learning_rate, weight_decay=0.01)
        self.scheduler = None
        if warmup_steps is not None:
            self.scheduler = get_scheduler("inverse_sqrt", self.optimizer, num_warmup_steps=warmup_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

    def autocast(self):
        dtype = AUTOCAST_DTYPES.get(self.precision)
        return torch.autocast(self.bench.device.type, dtype=dtype, enabled=dtype is not None)

    def backward(self, batch: dict, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """Forward, loss and backward of one step (the gradients accumulate); returns the loss."""
        batch = to_device(batch, self.bench.device)
        inputs = step_inputs(self.model, batch, self.cache, self.bench.device)
        if encoder_hidden_states is not None:
            inputs.pop("pixel_values")
            inputs["encoder_outputs"] = (encoder_hidden_states,)
        with self.autocast():
            logits = self.model(**inputs).logits
        loss, _ = caption_loss(logits, batch["labels"], label_smoothing=0.1)
        self.scaler.scale(loss).backward()
        return loss

    def step(self, batch: dict, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """One step; with `encoder_hidden_states` (computed beforehand), the model skips its encoder and images."""
        loss = self.backward(batch, encoder_hidden_states)
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def fixed_batches(bench: Bench, batch_size: int, count: int) -> list[dict]:
    """The same collated batches (same captions, same padding) for every model."""
    collator, train = bench.collator(), bench.splits["train"]
    return [collator([train[i] for i in range(k * batch_size, (k + 1) * batch_size)]) for k in range(count)]


def generation_kwargs(num_beams: int, max_new_tokens: int) -> dict:
    # Random-init models stop at EOS at different steps; min_new_tokens = max_new_tokens makes every model generate
    # exactly max_new_tokens tokens, so both do the same number of decoder steps (the longest-caption case).
    return {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens}


def evaluation_pixels(bench: Bench, count: int) -> torch.Tensor:
    test = bench.splits["test"]
    images = [test[i]["image"] for i in range(count)]
    return bench.processor(images=images)["pixel_values"].to(bench.device)


def seconds(work: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of `work()`, waiting for the GPU's queued kernels on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved(measures: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each repeat measures every model once, in turn (A, B, A, B, ...), so drift in machine load hits all alike and
    repeat i of two models can be paired."""
    values: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            values[name].append(measure())
    return values


def training_rates(runs: dict[str, "TrainingRun"], batches: list[dict], repeats: int) -> dict[str, list[float]]:
    """Training img/s of each run over `batches` (every batch the same size), `repeats` times, interleaved, after one
    untimed pass each (optimizer state, allocator, kernel choice, compilation)."""
    images = len(batches) * len(batches[0]["labels"])

    def rate(run: TrainingRun) -> float:
        return images / seconds(lambda: [run.step(batch) for batch in batches], run.bench.device)

    for run in runs.values():
        rate(run)
    return interleaved({name: partial(rate, run) for name, run in runs.items()}, repeats)


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


# The targets for captioner / VED.
TRAIN_TARGET, MEMORY_TARGET, FROZEN_TARGET = (">=", 1.0), ("<=", 1.0), (">=", 3.0)
BEAM32_TARGET, BEAM1_TARGET, QUALITY_TARGET = (">=", 1.3), (">=", 1.0), (">=", 1.0)


def _ratio(ours: float, theirs: float) -> float:
    # A score of 0 on both sides (a model that learnt nothing yet) counts as equal.
    if theirs == 0:
        return float("inf") if ours > 0 else 1.0
    return ours / theirs


def make_row(
    part: str,
    name: str,
    ours: list[float],
    theirs: list[float],
    target=None,
    ours_name=CAPTIONER,
    theirs_name=VED,
) -> dict:
    """A table row: both models' values and captioner / VED, paired repeat by repeat where both have the same
    number of values (they ran alternately), else the ratio of medians. `ours_name` and `theirs_name` say which
    variants the two columns hold (e.g. "captioner, compiled" over "ved")."""
    if len(ours) == len(theirs):
        ratios = [_ratio(a, b) for a, b in zip(ours, theirs, strict=True)]
    else:
        ratios = [_ratio(spread(ours)[0], spread(theirs)[0])]
    ratio = spread(ratios)[0]
    met = None if target is None else (ratio >= target[1] if target[0] == ">=" else ratio <= target[1])
    return {
        "part": part,
        "row": name,
        "model": ours_name,
        "baseline": theirs_name,
        "captioner": ours,
        "ved": theirs,
        "ratios": ratios,
        "ratio": ratio,
        "target": None if target is None else f"{target[0]} {target[1]}",
        "met": met,
    }


def extra(part: str, name: str, ours: list[float], theirs: list[float]) -> dict:
    """The same row for captioner's own Transformer decoder (captioner-transformer / VED): informative, without the
    issue's targets, which are set for the matched GPT-2 decoder."""
    return make_row(part, f"{name} [transformer]", ours, theirs, None, TRANSFORMER)
