"""Training benchmarks on CPU: throughput (images/s) and peak memory of the default model, and a frozen-encoder
epoch with the feature cache against the same epoch without it, side by side in one run.

    python bench/bench_train.py [--images 512] [--repeats 5] [--presets small resnet101-transformer]

Each measurement runs in its own subprocess, so peak memory (max RSS) belongs to that configuration alone."""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(preset: str, mode: str, images: int, batch_size: int, repeats: int, workdir: str) -> dict:
    """One configuration: `mode` is "train" (all parts train), "frozen" (encoder frozen, no cache) or "cached"
    (encoder frozen, features read from a filled cache). Returns images/s per repeat and peak RSS."""
    import torch
    from torch.utils.data import DataLoader

    from captioning.data import load_caption_splits
    from captioning.training.collator import CaptionCollator
    from captioning.training.data import CachedFeatures, training_sampler
    from captioning.training.feature_cache import FeatureCache, cache_key
    from captioning.training.loop import step_inputs
    from captioning.training.losses import caption_loss
    from captioning.training.unfreezing import UnfreezingSchedule, build_adamw, optimizer_groups, train_mode
    from modeling_captioner import (
        CaptionerConfig,
        CaptionerForConditionalGeneration,
        CaptionerProcessor,
        build_image_processor,
    )
    from tokenization import build_tokenizer

    torch.manual_seed(0)
    split = load_caption_splits("synthetic", sizes=(images, 8, 8))["train"]
    tokenizer = build_tokenizer(split.all_captions(), vocab_size=1000)
    model = CaptionerForConditionalGeneration(CaptionerConfig.from_preset(preset, tokenizer=tokenizer))
    processor = CaptionerProcessor(build_image_processor(model.config), tokenizer)
    text = "bridge,cross_attention,decoder,encoder@0" if mode == "train" else "bridge,cross_attention,decoder@0"
    schedule = UnfreezingSchedule.parse(text)
    parts = schedule.apply(model, 0)
    train_mode(model, parts)
    optimizer = build_adamw(optimizer_groups(model, schedule, 3e-4, 0.01), torch.device("cpu"))
    items, cache = split, None
    if mode == "cached":
        cache = FeatureCache(workdir, cache_key(model.encoder.backbone, processor.image_processor, preset), len(split))
        items = CachedFeatures(split, cache)
    sampler = training_sampler(len(items), 0)
    collator = CaptionCollator(processor, max_length=model.config.max_position_embeddings)
    loader = DataLoader(items, batch_size=batch_size, sampler=sampler, collate_fn=collator)

    def epoch() -> float:
        start = time.perf_counter()
        for batch in loader:
            labels = batch["labels"]
            inputs = step_inputs(model, batch, cache, "cpu")
            loss, _ = caption_loss(model(**inputs).logits, labels, label_smoothing=0.1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return time.perf_counter() - start

    if mode == "cached":
        fill_seconds = epoch()  # the first frozen epoch fills the cache (and trains, as in train.py)
        cache.flush()
        assert cache.complete
    else:
        epoch()  # warm-up: allocator, oneDNN kernels
        fill_seconds = None
    seconds = [epoch() for _ in range(repeats)]
    return {
        "preset": preset,
        "mode": mode,
        "parameters": sum(p.numel() for p in model.parameters()),
        "images": images,
        "batch_size": batch_size,
        "images_per_second": [images / s for s in seconds],
        "epoch_seconds": seconds,
        "cache_fill_epoch_seconds": fill_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(args, preset: str, mode: str, images: int, workdir: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        preset,
        mode,
        str(images),
        str(args.batch_size),
        str(args.repeats),
        workdir,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if completed.returncode:
        raise SystemExit(f"benchmark child {preset}/{mode} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def summary(result: dict) -> str:
    rates = result["images_per_second"]
    spread = f"{min(rates):.1f}–{max(rates):.1f}"
    return f"{statistics.median(rates):8.1f} img/s (range {spread}), peak RSS {result['peak_rss_mib']:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=512, help="Training images per epoch (synthetic).")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="Timed epochs per configuration (median reported).")
    parser.add_argument("--presets", nargs="+", default=["small", "resnet101-transformer"])
    parser.add_argument("--json", default=None, help="Also write the raw results here.")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        preset, mode, images, batch_size, repeats, workdir = args.child
        print(json.dumps(measure(preset, mode, int(images), int(batch_size), int(repeats), workdir)))
        return

    import tempfile

    import torch

    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )
    results = []
    for preset in args.presets:
        images = args.images if preset == "small" else max(64, args.images // 8)
        with tempfile.TemporaryDirectory() as workdir:
            rows = {mode: run_child(args, preset, mode, images, workdir) for mode in ("train", "frozen", "cached")}
        results.extend(rows.values())
        train, frozen, cached = rows["train"], rows["frozen"], rows["cached"]
        ratio = statistics.median(cached["images_per_second"]) / statistics.median(frozen["images_per_second"])
        print(f"\n{preset} ({train['parameters']:,} parameters, {images} images, batch {args.batch_size})")
        print(f"  training, all parts     {summary(train)}")
        print(f"  frozen encoder, no cache {summary(frozen)}")
        print(f"  frozen encoder, cache    {summary(cached)}")
        print(
            f"  cache speed-up on a frozen-encoder epoch: {ratio:.2f}x "
            f"(the epoch that fills the cache took {cached['cache_fill_epoch_seconds']:.1f}s)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
