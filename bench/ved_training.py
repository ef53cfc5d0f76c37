"""Parts 3 and 4 of bench_vs_ved.py, the ones that train through train.py's data pipeline: test quality after equal
wall-clock training from scratch, and a frozen-encoder epoch with captioner's feature cache against
VisionEncoderDecoderModel computing its frozen encoder every step."""

import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.ved_matched import (
    CAPTIONER,
    FROZEN_TARGET,
    MODELS,
    QUALITY_TARGET,
    TRANSFORMER,
    VED,
    Bench,
    TrainingRun,
    build_model,
    extra,
    interleaved,
    make_row,
    seconds,
    to_device,
)
from captioning.data import CaptionPairs
from captioning.evaluation.command import generate_captions
from captioning.evaluation.metrics import compute_caption_metrics
from captioning.training.data import CachedFeatures, training_sampler
from captioning.training.feature_cache import FeatureCache, cache_key
from captioning.training.unfreezing import UnfreezingSchedule, train_mode

# ---------------------------------------------------------------------------------------------------------------
# 3. Quality at equal wall-clock
# ---------------------------------------------------------------------------------------------------------------


class TimedTraining:
    """Trains one model from scratch on the train split in slices of wall-clock time (data loading included), in the
    same batch order and with the same captions as every other model: train.py's sampler and collator, seed 0."""

    def __init__(self, model, bench: Bench, batch_size: int):
        self.model = model.train()
        # train.py's main-job schedule (configs/synthetic-small.yaml): lr 1e-3, inverse-sqrt after 200 warm-up steps.
        self.run = TrainingRun(model, bench, learning_rate=1e-3, warmup_steps=200)
        train = bench.splits["train"]
        self.sampler, self.collator = training_sampler(len(train), 0), bench.collator()
        self.loader = DataLoader(train, batch_size=batch_size, sampler=self.sampler, collate_fn=self.collator)
        self.device = bench.device
        self.epoch, self.batches = 0, iter(self.loader)
        self.seconds, self.steps = 0.0, 0

    def next_batch(self) -> dict:
        for batch in self.batches:
            return batch
        self.epoch += 1
        self.sampler.set_epoch(self.epoch)
        self.collator.set_epoch(self.epoch)
        self.batches = iter(self.loader)
        return next(self.batches)

    def train_for(self, budget: float) -> None:
        def work():
            start = time.perf_counter()
            while time.perf_counter() - start < budget:
                self.run.step(self.next_batch())
                self.steps += 1

        self.seconds += seconds(work, self.device)


def quality_rows(bench: Bench, minutes: float, batch_size: int, runs: int, beams: int, max_new_tokens: int):
    budget = minutes * 60
    # Slices alternate between the models, so a busy spell on the machine costs all of them alike.
    slice_seconds = min(5.0, max(budget / 8, 0.5))
    test = bench.splits["test"]
    scores: dict[str, list[dict]] = {name: [] for name in MODELS}
    for seed in range(runs):
        trainings = {name: TimedTraining(build_model(name, bench, seed), bench, batch_size) for name in MODELS}
        while any(t.seconds < budget for t in trainings.values()):
            for training in trainings.values():
                if training.seconds < budget:
                    training.train_for(min(slice_seconds, budget - training.seconds))
        for name, training in trainings.items():
            predictions, references, *_ = generate_captions(
                training.model,
                bench.processor,
                test,
                show_progress=False,
                num_beams=beams,
                max_new_tokens=max_new_tokens,
            )
            metrics = compute_caption_metrics(predictions, references, meteor=False, expected_num_images=len(test))
            scores[name].append(
                {**metrics, "steps": training.steps, "seconds": training.seconds, "epoch": training.epoch}
            )
            example = next(iter(predictions.items()))
            print(f"  [{name}] {training.steps} steps in {training.seconds:.0f}s, e.g. {example[0]}: {example[1]!r}")
    rows = []
    for key, target in (("CIDEr-D", QUALITY_TARGET), ("BLEU-4", None), ("steps", None)):
        name = f"test {key} after {minutes:g} min" if key != "steps" else f"optimizer steps in {minutes:g} min"
        values = {model: [score[key] for score in scores[model]] for model in MODELS}
        rows.append(make_row("quality", name, values[CAPTIONER], values[VED], target))
        rows.append(extra("quality", name, values[TRANSFORMER], values[VED]))
    return rows, scores


# ---------------------------------------------------------------------------------------------------------------
# 4. Frozen encoder: captioner's feature cache against VED computing the frozen encoder every step
# ---------------------------------------------------------------------------------------------------------------


# The frozen-encoder stages of the ViT + GPT-2 recipe (cross-attention first, then GPT-2 with it; the encoder last):
# name → (train.py's --unfreeze_schedule for captioner, what trains).
STAGES = {
    "decoder": ("bridge,cross_attention,decoder@0", "decoder + cross-attention train"),
    "cross_attention": ("bridge,cross_attention@0", "cross-attention trains"),
}


def frozen_captioner(name: str, bench: Bench, split, workdir: Path | None, stage: str = "decoder"):
    """train.py's frozen-encoder `stage` (STAGES): the stage's parts train; with a `workdir`, the backbone's features
    come from a FeatureCache (filled during the first epoch). Returns the TrainingRun and the items to load."""
    model = build_model(name, bench)
    schedule = UnfreezingSchedule.parse(STAGES[stage][0])
    train_mode(model, schedule.apply(model, 0))
    if workdir is None:
        return TrainingRun(model, bench), split
    key = cache_key(model.encoder.backbone, bench.processor.image_processor, split.fingerprint())
    cache = FeatureCache(workdir, key, len(split))
    return TrainingRun(model, bench, cache=cache), CachedFeatures(split, cache)


def frozen_ved(bench: Bench, stage: str = "decoder"):
    """VisionEncoderDecoderModel in a frozen-encoder `stage`: encoder without gradients and in eval mode; the decoder
    training, all of it or (stage "cross_attention") only its cross-attention blocks, the parameters captioner's
    "cross_attention" group holds in the same GPT-2."""
    ved = build_model(VED, bench).train()
    ved.encoder.requires_grad_(False)
    ved.encoder.eval()
    if stage == "cross_attention":
        for name, parameter in ved.decoder.named_parameters():
            parameter.requires_grad_(".crossattention." in name or ".ln_cross_attn." in name)
    return ved


def epoch_loader(items, batch_size: int, collator) -> DataLoader:
    """train.py's order (its seedable sampler, seed 0), the same for every model and every repeat."""
    return DataLoader(items, batch_size, sampler=training_sampler(len(items), 0), collate_fn=collator)


def epoch_rate(run: TrainingRun, loader: DataLoader, trained: int, device) -> float:
    """`trained` (images or pairs) per second of one training pass over `loader`."""
    return trained / seconds(lambda: [run.step(batch) for batch in loader], device)


def ved_decoder_alone(bench: Bench, split, batch_size: int, stage: str = "decoder"):
    """VED with its frozen encoder's outputs for every batch computed beforehand: what is left of VED's frozen-encoder
    step without the encoder and the images, i.e. its decoder's training alone (captions collated beforehand too).
    Its rate over VED's is the most that anything on the encoder side (a feature cache included) can gain VED:
    Amdahl's ceiling. captioner's own decoder is the same arithmetic with GPT-2's GELU fused (faster), and its cached
    epoch also collates captions and reads the cache, so it is a reference point, not an exact bound for captioner."""
    ved = frozen_ved(bench, stage)
    batches = []
    with torch.no_grad():
        for batch in epoch_loader(split, batch_size, bench.collator()):
            batch = to_device(batch, bench.device)  # once, here: the timed steps move nothing
            batches.append((batch, ved.encoder(pixel_values=batch["pixel_values"]).last_hidden_state))
    run = TrainingRun(ved, bench)
    return lambda: len(split) / seconds(lambda: [run.step(batch, hidden) for batch, hidden in batches], bench.device)


def frozen_rows(
    bench: Bench, repeats: int, images: int, batch_size: int, variants: bool = True, stage: str = "decoder"
):
    """A frozen-encoder epoch (one caption per image) of captioner reading its feature cache against VED computing
    its frozen encoder, and the ceiling (`ved_decoder_alone`), in `stage`. With `variants`, also captioner's
    Transformer decoder with the cache and captioner without the cache (where it computes the encoder as VED does)."""
    split = bench.splits["train"].subset(range(images))
    label = f"{bench.preset}, batch {batch_size}; {STAGES[stage][1]}"
    with tempfile.TemporaryDirectory() as workdir:
        runs = {"captioner+cache": frozen_captioner(CAPTIONER, bench, split, Path(workdir) / CAPTIONER, stage)}
        if variants:
            runs["transformer+cache"] = frozen_captioner(TRANSFORMER, bench, split, Path(workdir) / TRANSFORMER, stage)
            runs["captioner, no cache"] = frozen_captioner(CAPTIONER, bench, split, None, stage)
        runs["ved"] = (TrainingRun(frozen_ved(bench, stage), bench), split)
        measures = {
            name: partial(epoch_rate, run, epoch_loader(items, batch_size, bench.collator()), len(split), bench.device)
            for name, (run, items) in runs.items()
        }
        # The first epoch fills the caches (and trains, as in train.py) and warms up the others.
        first = {name: measure() for name, measure in measures.items()}
        for run, _ in runs.values():
            if run.cache is not None:
                run.cache.flush()
                assert run.cache.complete, "the first frozen epoch must fill the feature cache"
        measures["ved, decoder alone"] = ved_decoder_alone(bench, split, batch_size, stage)
        measures["ved, decoder alone"]()  # warm-up
        rates = interleaved(measures, repeats)
    name = f"frozen-encoder epoch img/s ({label})"
    rows = [make_row("frozen", f"{name}, feature cache", rates["captioner+cache"], rates["ved"], FROZEN_TARGET)]
    if variants:
        rows.append(extra("frozen", f"{name}, feature cache", rates["transformer+cache"], rates["ved"]))
        rows.append(make_row("frozen", f"{name}, no cache", rates["captioner, no cache"], rates["ved"]))
    ceiling = make_row("frozen", f"{name}: ceiling, VED decoder alone", rates["ved, decoder alone"], rates["ved"])
    ceiling["model"] = "ved, decoder alone"
    rows.append(ceiling)
    fill = {
        "fill_epoch_images_per_second": first["captioner+cache"],
        "images": len(split),
        "batch_size": batch_size,
        "stage": stage,
    }
    return rows, fill


def pair_rows(bench: Bench, repeats: int, images: int, batch_size: int, stage: str = "decoder") -> list[dict]:
    """A frozen-encoder epoch over every (image, caption) pair, in `stage`: VED, as its training scripts iterate over
    pairs, computes its frozen encoder for each pair (`CaptionPairs`); captioner reads each image's features once
    from its cache and trains all of the image's captions in the same batch (train.py's --captions_per_image), so one
    copy of the image's cross-attention keys and values serves them all. Both take the same number of pairs per
    step."""
    split = bench.splits["train"].subset(range(images))
    per_image = min(len(record.captions) for record in split.records)
    pairs_per_step = per_image * max(1, batch_size // per_image)
    pairs = CaptionPairs(split)
    with tempfile.TemporaryDirectory() as workdir:
        run, items = frozen_captioner(CAPTIONER, bench, split, Path(workdir) / CAPTIONER, stage)
        grouped = epoch_loader(items, pairs_per_step // per_image, bench.collator(captions_per_image=per_image))
        # Pairs trained on per epoch: all of them for VED; per_image of each image for captioner (equal when every
        # image has per_image references, as in the synthetic dataset).
        measures = {
            "captioner": partial(epoch_rate, run, grouped, len(split) * per_image, bench.device),
            "ved": partial(
                epoch_rate,
                TrainingRun(frozen_ved(bench, stage), bench),
                epoch_loader(pairs, pairs_per_step, bench.collator()),
                len(pairs),
                bench.device,
            ),
        }
        for measure in measures.values():  # fills captioner's cache, warms VED up
            measure()
        run.cache.flush()
        assert run.cache.complete, "the first epoch must fill the feature cache"
        rates = interleaved(measures, repeats)
    name = (
        f"frozen-encoder epoch over all pairs, pairs/s ({bench.preset}, {pairs_per_step} pairs a step; "
        f"{STAGES[stage][1]}), feature cache + {per_image} captions per image"
    )
    return [make_row("frozen", name, rates["captioner"], rates["ved"], FROZEN_TARGET)]
