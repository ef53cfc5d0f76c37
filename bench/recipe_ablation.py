"""The from-scratch recipe on the hard synthetic set, one change at a time, each run to the same time budget: the old
main job's settings (64×64, inverse-sqrt, one caption per image), then the recipe's input size, captions per image,
schedule and decoding, and a wider decoder. Each variant is train.py in its own process (its own time budget, no
cross-talk); the table (test CIDEr-D against human agreement, with the degeneration diagnostics) goes to stdout and
--output. BENCHMARKS.md has the figures.

    python bench/recipe_ablation.py --minutes 6 --output outputs/recipe_ablation.json   # models in outputs/recipe_ablation/
    python bench/recipe_ablation.py --minutes 6 --variants recipe,wide
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMON = [
    "--dataset_format", "synthetic", "--synthetic_variant", "hard", "--per_device_train_batch_size", "32",
    "--learning_rate", "1e-3", "--num_warmup_steps", "200", "--label_smoothing", "0.1", "--num_beams", "5",
    "--length_penalty", "0.6", "--no_meteor", "--no-with_tracking",
]  # fmt: skip
# The recipe's own settings (configs/synthetic-hard.yaml); the variants below change one or two of them.
PLANNED_128 = ["--preset", "small-128", "--lr_scheduler_type", "cosine"]
FIVE_CAPTIONS = [*PLANNED_128, "--captions_per_image", "5"]
RECIPE = [*FIVE_CAPTIONS, "--no_repeat_ngram_size", "3"]
# name → (what changes, train.py flags, preset field overrides)
VARIANTS = {
    "old-main-job": (
        "configs/synthetic-small.yaml's settings: small (64×64), inverse-sqrt, 25 epochs, 1 caption per image",
        ["--preset", "small", "--lr_scheduler_type", "inverse_sqrt", "--num_train_epochs", "25",
         "--no_repeat_ngram_size", "0"],
        {},
    ),
    "128px": (
        "small-128, cosine planned to the budget, 1 caption per image",
        [*PLANNED_128, "--no_repeat_ngram_size", "0"],
        {},
    ),
    "128px-5captions": ("+ --captions_per_image 5", [*FIVE_CAPTIONS, "--no_repeat_ngram_size", "0"], {}),
    "96px-5captions": (
        "the same at 96×96 (a 6×6 grid)", [*FIVE_CAPTIONS, "--no_repeat_ngram_size", "0"], {"image_size": 96}
    ),
    "recipe": ("+ --no_repeat_ngram_size 3: configs/synthetic-hard.yaml", RECIPE, {}),
    "augment": (
        "the recipe with --augment (random resized crop and colour jitter, ramped over 10 epochs)",
        [*RECIPE, "--augment"],
        {},
    ),
    "wide": (
        "the recipe with a wider, deeper decoder (d_model 192, 3 decoder layers, FFN 384)",
        RECIPE,
        {"d_model": 192, "decoder_layers": 3, "decoder_ffn_dim": 384, "encoder_ffn_dim": 384},
    ),
}  # fmt: skip

# A child process: train.py's main() with the preset's fields overridden (sizes train.py has no flags for).
CHILD = """
import json, sys
sys.path.insert(0, {root!r})
from modeling_captioner.configuration_captioner import PRESETS
PRESETS["small-128"] = {{**PRESETS["small-128"], "fields": {{**PRESETS["small-128"]["fields"], **json.loads({fields!r})}}}}
import train
train.main(json.loads({argv!r}))
"""


def run_variant(name: str, minutes: float, output_dir: Path) -> dict:
    change, flags, fields = VARIANTS[name]
    argv = [*COMMON, *flags, "--output_dir", str(output_dir)]
    if "--num_train_epochs" not in flags:
        argv += ["--num_train_epochs", "1000", "--max_train_minutes", str(minutes)]
    code = CHILD.format(root=str(ROOT), fields=json.dumps(fields), argv=json.dumps(argv))
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"variant {name} failed:\n{completed.stderr[-3000:]}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    test, diagnostics = metrics["test"], metrics["test_diagnostics"]
    return {
        "variant": name,
        "change": change,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "train_seconds": metrics["train_seconds"],
        "optimizer_steps": metrics["optimizer_steps"],
        "CIDEr-D": test["CIDEr-D"],
        "human_agreement": metrics["human_agreement"]["CIDEr-D"],
        "BLEU-4": test["BLEU-4"],
        **diagnostics,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0, help="Each variant's --max_train_minutes.")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma-separated, of {', '.join(VARIANTS)}.")
    parser.add_argument("--output", default=None, help="Write the table as JSON here.")
    parser.add_argument(
        "--output_dir", default="outputs/recipe_ablation", help="Each variant's model folder goes to OUTPUT_DIR/NAME."
    )
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}.")
    rows = []
    print("| variant | change | steps | test CIDEr-D | × human | BLEU-4 | rep. 3-gram | truncated | mean length |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        row = run_variant(name, args.minutes, Path(args.output_dir) / name)
        rows.append(row)
        print(
            f"| {name} | {row['change']} | {row['optimizer_steps']} | {row['CIDEr-D']:.3f} | "
            f"{row['CIDEr-D'] / row['human_agreement']:.2f} | {row['BLEU-4']:.3f} | "
            f"{100 * row['repeated_3gram']:.1f}% (refs {100 * row['references/repeated_3gram']:.1f}%) | "
            f"{100 * row['truncated']:.1f}% | {row['mean_length']:.1f} (refs {row['references/mean_length']:.1f}) |",
            flush=True,
        )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"minutes": args.minutes, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
