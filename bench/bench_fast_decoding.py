"""Eager dynamic-cache decoding against the fast path (static cache + compiled step), same model, same images, in the
same run: the issue-14 CPU target is compiled greedy at batch 1 ≥ 1.5× eager for the `small` preset.

    python bench/bench_fast_decoding.py [--preset small] [--device cpu] [--rows greedy:1,beam5:8] [--repeats 5]
        [--images 8] [--max_new_tokens 20] [--output outputs/bench_fast_decoding.json]

Each row decodes `--images` images (one generate() per batch) with every path, timed alternately within each repeat so
that drift in machine load hits all alike; compilation and warm-up happen before timing. The ids of every path are
checked equal to eager's."""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {"greedy": {}, "beam5": {"num_beams": 5}, "sample": {"do_sample": True, "top_k": 50}}
PATHS = ("eager", "static", "compiled")


def parse_rows(text: str) -> list[tuple[str, int]]:
    rows = []
    for item in text.split(","):
        mode, _, batch = item.partition(":")
        if mode not in MODES or not batch.isdigit() or int(batch) < 1:
            raise SystemExit(f"--rows: {item!r} is not MODE:BATCH with MODE in {sorted(MODES)} and BATCH ≥ 1")
        rows.append((mode, int(batch)))
    return rows


def build(preset: str, device: str, dtype: str):
    import torch

    from captioning.data import load_caption_splits
    from modeling_captioner import (
        CaptionerConfig,
        CaptionerForConditionalGeneration,
        CaptionerProcessor,
        build_image_processor,
    )
    from tokenization import build_tokenizer

    split = load_caption_splits("synthetic", sizes=(256, 32, 8))
    tokenizer = build_tokenizer(split["train"].all_captions(), vocab_size=1000)
    torch.manual_seed(0)
    config = CaptionerConfig.from_preset(preset, tokenizer=tokenizer)
    model = CaptionerForConditionalGeneration(config).eval().to(device=device, dtype=getattr(torch, dtype))
    processor = CaptionerProcessor(build_image_processor(config), tokenizer)
    images = [split["validation"][i]["image"] for i in range(32)]
    pixel_values = processor(images=images)["pixel_values"].to(device=device, dtype=getattr(torch, dtype))
    return model, pixel_values


def set_path(model, path: str, device: str) -> None:
    from captioning.fast_decoding import disable_fast_decoding, enable_fast_decoding

    if path == "eager":
        disable_fast_decoding(model)
    else:
        enable_fast_decoding(model, compile=path == "compiled", all_devices=device == "cpu")


def run_row(model, pixel_values, mode: str, batch_size: int, images: int, max_new_tokens: int, repeats: int, device):
    import torch

    # min_new_tokens: a random model would stop at random lengths; every path decodes the same number of steps.
    kwargs = {"max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens, **MODES[mode]}
    batches = [pixel_values[i : i + batch_size] for i in range(0, images, batch_size)]

    def decode() -> list:
        torch.manual_seed(0)
        outputs = [model.generate(batch, **kwargs) for batch in batches]
        if device == "cuda":
            torch.cuda.synchronize()
        return outputs

    ids, warm_up_s = {}, {}
    for path in PATHS:
        set_path(model, path, device)
        start = time.perf_counter()
        ids[path] = decode()  # compilation, CUDA graphs and allocator growth happen here
        decode()
        warm_up_s[path] = time.perf_counter() - start
    seconds = {path: [] for path in PATHS}
    for _ in range(repeats):
        for path in PATHS:
            set_path(model, path, device)
            start = time.perf_counter()
            decode()
            seconds[path].append(time.perf_counter() - start)
    set_path(model, "eager", device)
    tokens = images * max_new_tokens
    row = {"mode": mode, "batch_size": batch_size, "images": images, "max_new_tokens": max_new_tokens}
    for path in PATHS:
        median = statistics.median(seconds[path])
        row[path] = {
            "images_per_s": images / median,
            "ms_per_token_step": 1000 * median / (len(batches) * max_new_tokens),
            "range_images_per_s": [images / max(seconds[path]), images / min(seconds[path])],
            "warm_up_s": warm_up_s[path],
            "same_ids_as_eager": all(torch.equal(a, b) for a, b in zip(ids[path], ids["eager"], strict=True)),
        }
    row["compiled_over_eager"] = row["compiled"]["images_per_s"] / row["eager"]["images_per_s"]
    row["tokens"] = tokens
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--rows", default="greedy:1,beam5:8", type=parse_rows)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    import torch

    model, pixel_values = build(args.preset, args.device, args.dtype)
    rows = []
    with torch.inference_mode():
        for mode, batch_size in args.rows:
            images = max(args.images, batch_size)
            rows.append(
                run_row(model, pixel_values, mode, batch_size, images, args.max_new_tokens, args.repeats, args.device)
            )
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    result = {
        "command": "python bench/bench_fast_decoding.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "preset": args.preset,
        "dtype": args.dtype,
        "rows": rows,
    }
    print(f"# {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, preset {args.preset}")
    print("| decoding | batch | eager img/s | static img/s | compiled img/s | compiled ms/step | compiled / eager |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        same = "" if all(row[path]["same_ids_as_eager"] for path in PATHS) else " (ids differ!)"
        print(
            f"| {row['mode']} | {row['batch_size']} | {row['eager']['images_per_s']:.2f} | "
            f"{row['static']['images_per_s']:.2f} | {row['compiled']['images_per_s']:.2f} | "
            f"{row['compiled']['ms_per_token_step']:.2f} | **{row['compiled_over_eager']:.2f}×**{same} |"
        )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
