"""The Python half of bench/gpu_check.sh: writes the synthetic images the caption step reads, saves a stand-in model
when the main job left none, and gathers every step's status and figures into one JSON.

    python bench/gpu_check.py render FOLDER [--count 2000] [--size 256]
    python bench/gpu_check.py model FOLDER
    python bench/gpu_check.py summary OUT
"""

import argparse
import json
import re
import statistics
import sys
from datetime import datetime
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The main job's per-epoch time before issue 14 (fp16 autocast, eager, one H200; ../shared/gpu/README.md).
OLD_SECONDS_PER_EPOCH = 5.0


# ---------------------------------------------------------------------------------------------------------------
# Inputs of the caption step
# ---------------------------------------------------------------------------------------------------------------


def _render(job: tuple) -> None:
    from captioning.data.synthetic import render_scene

    scene, size, path = job
    render_scene(scene, size).save(path, quality=90)


def render(folder: Path, count: int, size: int) -> None:
    """`count` scenes of the built-in synthetic dataset (the main job's kind of image), drawn at `size` pixels and
    saved as JPEG: the caption command decodes and resizes them as it would a user's photos."""
    from captioning.data.synthetic import build_synthetic_splits

    folder.mkdir(parents=True, exist_ok=True)
    scenes = build_synthetic_splits(seed=14, sizes=(count, 1, 1))["train"]
    jobs = [(example.scene, size, folder / f"{example.image_id}.jpg") for example in scenes]
    with Pool() as pool:
        pool.map(_render, jobs, chunksize=32)
    print(f"wrote {len(jobs)} images of {size}px to {folder}")


def stand_in_model(folder: Path) -> None:
    """A random-init captioner of the main job's preset (small, ResNet + Transformer) with its processor: the caption
    step's model when the main job saved none. Its captions run to the length limit, so it is the slow case."""
    from captioning.data.synthetic import synthetic_vocabulary
    from modeling_captioner import (
        CaptionerConfig,
        CaptionerForConditionalGeneration,
        CaptionerProcessor,
        build_image_processor,
    )
    from tokenization import build_tokenizer

    tokenizer = build_tokenizer([" ".join(synthetic_vocabulary())], vocab_size=300)
    config = CaptionerConfig.from_preset("small", tokenizer=tokenizer)
    CaptionerForConditionalGeneration(config).save_pretrained(folder)
    CaptionerProcessor(build_image_processor(config), tokenizer).save_pretrained(folder)
    print(f"saved a random-init small captioner to {folder}")


# ---------------------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------------------


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def pytest_figures(log: str) -> dict:
    """Counts from pytest's last summary line, the failed tests' ids, and the slowest durations it listed."""
    figures: dict = {}
    summaries = re.findall(r"^=*\s*((?:\d+ \w+(?:, )?)+) in ([\d.]+)s", log, flags=re.M)
    if summaries:
        counts, seconds = summaries[-1]
        figures = {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", counts)}
        figures["seconds"] = float(seconds)
    else:  # stopped before its summary: what the verbose progress lines say so far
        for outcome in ("PASSED", "FAILED", "ERROR", "SKIPPED"):
            figures[f"{outcome.lower()} so far"] = len(re.findall(rf"\b{outcome}\b", log))
    figures["failures"] = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", log, flags=re.M)))
    figures["durations"] = re.findall(r"^([\d.]+s (?:call|setup|teardown)\s+\S+)", log, flags=re.M)[:15]
    return figures


def _timestamp(line: str) -> datetime | None:
    # search, not match: a progress bar's carriage-return remains can precede the logging's timestamp.
    match = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO", line)
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f") if match else None


def train_figures(log: str, folder: Path) -> dict:
    """Seconds per epoch of a train.py run from its log: the time from the line before the loop ("AdamW: ...") to
    the end of epoch 0's validation, then between consecutive epochs' validation lines (training and validation
    both); the steady figure is the median of epochs 1 on (epoch 0 holds compilation and warm-up). Also its
    metrics.json figures."""
    lines = log.splitlines()
    marks = [(_timestamp(line), line) for line in lines]
    start = next((time for time, line in marks if time and "AdamW:" in line), None)
    ends = [time for time, line in marks if time and re.search(r"epoch \d+: validation (?!captions)", line)]
    figures: dict = {}
    chosen = [line.split("mixed precision: ", 1)[1] for line in lines if "mixed precision: " in line]
    if chosen:
        figures["mixed_precision"] = chosen[0]
    speed = [line.split("speed: ", 1)[1] for line in lines if "speed: " in line]
    if speed:  # workers, pinned memory, channels_last, torch.compile, gradient checkpointing as the run set them
        figures["speed_settings"] = speed[0]
    if start and ends:
        epochs = [(b - a).total_seconds() for a, b in zip([start, *ends], ends, strict=False)]
        figures["epoch_seconds"] = [round(seconds, 2) for seconds in epochs]
        steady = epochs[1:] or epochs
        figures["seconds_per_epoch"] = round(statistics.median(steady), 2)
        figures["fewer_seconds_than_before"] = round(OLD_SECONDS_PER_EPOCH / figures["seconds_per_epoch"], 2)
    metrics = folder / "metrics.json"
    if metrics.is_file():
        report = json.loads(metrics.read_text())
        figures.update(
            train_seconds=report.get("train_seconds"),
            optimizer_steps=report.get("optimizer_steps"),
            best_validation_cider=report.get("best_validation_cider"),
            test_cider=(report.get("test") or {}).get("CIDEr-D"),
        )
    return figures


def bench_figures(path: Path) -> dict:
    """bench_vs_ved.py's rows (medians and ratios), the targets first."""
    if not path.is_file():
        return {}
    results = json.loads(path.read_text())
    rows = []
    for row in results.get("rows", []):
        rows.append(
            {
                "row": row["row"],
                "model": row.get("model"),
                "baseline": row.get("baseline", "ved"),
                "ours": statistics.median(row["captioner"]),
                "theirs": statistics.median(row["ved"]),
                "ratio": row["ratio"],
                "ratio_range": [min(row["ratios"]), max(row["ratios"])],
                "target": row["target"],
                "met": row["met"],
            }
        )
    rows.sort(key=lambda row: row["target"] is None)
    peak = results.get("matmul_peak")
    return {
        "command": results.get("command"),
        "machine": results.get("machine"),
        "matmul_peak_tflops": peak and round(peak["flops_per_second"] / 1e12, 2),
        "rows": rows,
    }


def caption_figures(log: str, captions: Path, seconds: float | None) -> dict:
    """Images captioned, the command's own images/s (warm-up excluded) and the wall-clock rate (start-up, model
    load and warm-up included)."""
    count = len(_read(captions).splitlines())
    figures = {"images": count, "wall_seconds": seconds}
    reported = re.findall(r"\(([\d.]+) images/s", log)
    if reported:
        figures["images_per_second"] = float(reported[-1])
    warm = re.findall(r"warmed up in ([\d.]+) s", log)
    if warm:
        figures["warm_up_seconds"] = float(warm[-1])
    if seconds:
        figures["images_per_second_wall"] = round(count / seconds, 1)
    return figures


def summary(out: Path) -> dict:
    steps = {}
    for line in _read(out / "steps.tsv").splitlines():
        name, status, seconds, limit = line.split("\t")
        exit_status = int(status) if status.lstrip("-").isdigit() else status
        steps[name] = {"exit": exit_status, "seconds": int(seconds), "limit_s": int(limit), "log": f"{name}.log"}
        if exit_status in (124, 137):
            steps[name]["timed_out"] = True
    result = {"steps": steps, "environment": json.loads(_read(out / "environment.json") or "{}")}
    result["gpu_tests"] = pytest_figures(_read(out / "tests.log"))
    result["suite"] = pytest_figures(_read(out / "suite.log"))
    for name in ("main", "main_compiled"):
        if name in steps:
            result[name] = train_figures(_read(out / f"{name}.log"), out / name)
    result["bench"] = bench_figures(out / "bench.json")
    caption_seconds = steps.get("caption", {}).get("seconds")
    result["caption"] = caption_figures(_read(out / "caption.log"), out / "captions.jsonl", caption_seconds)
    model = _read(out / "caption_model.txt").strip()
    if model:
        result["caption"]["model"] = model
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    images = commands.add_parser("render")
    images.add_argument("folder", type=Path)
    images.add_argument("--count", type=int, default=2000)
    images.add_argument("--size", type=int, default=256)
    commands.add_parser("model").add_argument("folder", type=Path)
    commands.add_parser("summary").add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "render":
        render(args.folder, args.count, args.size)
    elif args.command == "model":
        stand_in_model(args.folder)
    else:
        print(json.dumps(summary(args.out), indent=1))


if __name__ == "__main__":
    main()
