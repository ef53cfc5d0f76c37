"""captioner against 🤗 VisionEncoderDecoderModel (VED) in one run, on the built-in synthetic dataset, with the same ViT
and GPT-2 configs inside both (and captioner's own Transformer decoder at equal parameter count as extra rows):
training throughput, MFU and peak memory, generation throughput and latency, test CIDEr-D / BLEU-4 after equal
wall-clock training, and frozen-encoder epochs with captioner's feature cache against VED with a frozen encoder, in
both frozen-encoder stages of the ViT + GPT-2 recipe (cross-attention alone, then GPT-2 with it). With --compiled (the
default on a GPU), also captioner's fast path beside the eager rows: its training step under torch.compile in bf16
autocast, and static-cache compiled decoding, against VED as a user runs it (eager) and, with --compile_ved, VED's own
torch.compile / static-cache path, which transformers supports for VED with a GPT-2 decoder.

    python bench/bench_vs_ved.py [--repeats 5] [--minutes 2] [--batch_sizes 32 64] [--device auto] [--quick]
                                 [--parts training memory generation quality frozen] [--preset small]
                                 [--compiled | --no-compiled] [--compile_ved]
                                 [--frozen_presets small vit-gpt2] [--frozen_stages decoder cross_attention]
                                 [--threads N] [--profile] [--output FILE.json]

Every row is captioner / VED with its spread: speed rows pair repeat i of both models (they run alternately) and
give the median ratio with its range. MFU rows divide one step's FLOPs (torch.utils.flop_counter) per second by the
matmul peak measured in the same run (bf16 8192³ on a GPU, fp32 1024³ on a CPU)."""

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench.ved_fast import (  # noqa: E402
    compiled_training_rows,
    fast_generation_rows,
    matmul_peak,
    mfu_percent,
    step_flops,
)
from bench.ved_matched import (  # noqa: E402
    BEAM1_TARGET,
    BEAM32_TARGET,
    CAPTIONER,
    MEMORY_TARGET,
    MODELS,
    TRAIN_TARGET,
    TRANSFORMER,
    VED,
    Bench,
    TrainingRun,
    build_bench,
    build_model,
    evaluation_pixels,
    extra,
    fixed_batches,
    generation_kwargs,
    interleaved,
    make_row,
    parameter_counts,
    seconds,
    spread,
    training_rates,
)
from bench.ved_training import STAGES, frozen_rows, pair_rows, quality_rows  # noqa: E402

PARTS = ("training", "memory", "generation", "quality", "frozen")
# Two steps: the first creates AdamW's state, the second trains with it.
MEMORY_STEPS = 2


# ---------------------------------------------------------------------------------------------------------------
# 1. Training throughput and peak memory
# ---------------------------------------------------------------------------------------------------------------


def training_rows(bench: Bench, batch_sizes: list[int], repeats: int, steps: int) -> list[dict]:
    """Training img/s of the eager models, and their MFU."""
    models = {name: build_model(name, bench).train() for name in MODELS}
    peak = matmul_peak(str(bench.device))
    rows = []
    for batch_size in batch_sizes:
        batches = fixed_batches(bench, batch_size, steps)
        runs = {name: TrainingRun(model, bench) for name, model in models.items()}
        flops = {name: step_flops(run, batches[0]) for name, run in runs.items()}
        rates = training_rates(runs, batches, repeats)
        name = f"train img/s, batch {batch_size}"
        rows.append(make_row("training", name, rates[CAPTIONER], rates[VED], TRAIN_TARGET))
        rows.append(extra("training", name, rates[TRANSFORMER], rates[VED]))
        mfu = {name: mfu_percent(rates[name], batch_size, flops[name], peak) for name in MODELS}
        name = f"train MFU %, batch {batch_size}"
        rows.append(make_row("training", name, mfu[CAPTIONER], mfu[VED]) | {"flops_per_step": flops, "peak": peak})
        rows.append(extra("training", name, mfu[TRANSFORMER], mfu[VED]))
    return rows


def tensor_peak_mib(bench: Bench, name: str, batch_size: int) -> float:
    """Peak growth of live tensor memory while `name` trains MEMORY_STEPS steps, above what was live before the first
    step (parameters and batches): AdamW state, gradients, activations, temporaries. On a GPU from the allocator's
    counters; on a CPU, which keeps none, from torch.profiler's allocator events (every allocation and release, in
    order): exact and repeatable, where RSS moves by a few MiB from run to run."""
    model = build_model(name, bench).train()
    run = TrainingRun(model, bench)
    batches = fixed_batches(bench, batch_size, MEMORY_STEPS)
    gc.collect()
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)
        before = torch.cuda.memory_allocated(bench.device)
        for batch in batches:
            run.step(batch)
        return (torch.cuda.max_memory_allocated(bench.device) - before) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for batch in batches:
            run.step(batch)
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:  # + on allocation, - on release
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_growth_mib(bench: Bench, name: str, batch_size: int) -> float:
    """What the operating system sees (run in a fresh process): the peak resident set while `name` trains
    MEMORY_STEPS steps (VmHWM, reset through /proc/self/clear_refs just before the first step) above the resident set
    at that moment. Where /proc is missing, the max RSS since the process started."""
    model = build_model(name, bench).train()
    run = TrainingRun(model, bench)
    batches = fixed_batches(bench, batch_size, MEMORY_STEPS)
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
        before = _status_mib("VmRSS")
    except OSError:
        before = None
    for batch in batches:
        run.step(batch)
    if before is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return _status_mib("VmHWM") - before


def memory_rows(args, bench: Bench) -> list[dict]:
    rows = []
    for batch_size in args.batch_sizes:
        tensors = {name: [tensor_peak_mib(bench, name, batch_size)] for name in MODELS}
        name = f"train peak tensor MiB, batch {batch_size}"
        rows.append(make_row("memory", name, tensors[CAPTIONER], tensors[VED], MEMORY_TARGET))
        rows.append(extra("memory", name, tensors[TRANSFORMER], tensors[VED]))
        if bench.device.type == "cuda":
            continue

        def child(model: str, size: int = batch_size) -> float:
            command = [sys.executable, __file__, *args.argv, "--memory_child", model, str(size)]
            completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if completed.returncode:
                raise SystemExit(f"memory child {model}/{size} failed:\n{completed.stderr[-3000:]}")
            return float(completed.stdout.strip().splitlines()[-1])

        rss = interleaved({model: partial(child, model) for model in MODELS}, args.memory_repeats)
        name = f"train peak RSS growth MiB, batch {batch_size}"
        rows.append(make_row("memory", name, rss[CAPTIONER], rss[VED]))
        rows.append(extra("memory", name, rss[TRANSFORMER], rss[VED]))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# 2. Generation throughput and latency
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def generation_rows(bench: Bench, repeats: int, batch_size: int, max_new_tokens: int, latency_images: int):
    models = {name: build_model(name, bench).eval() for name in MODELS}
    batch = evaluation_pixels(bench, batch_size)
    singles = evaluation_pixels(bench, latency_images).split(1)
    rows = []
    for label, num_beams in (("beam-5", 5), ("greedy", 1)):
        kwargs = generation_kwargs(num_beams, max_new_tokens)

        def batch_rate(model, kwargs: dict = kwargs) -> float:
            with bench.autocast():
                return len(batch) / seconds(lambda: model.generate(batch, **kwargs), bench.device)

        def single_rate(model, kwargs: dict = kwargs) -> float:
            with bench.autocast():
                return len(singles) / seconds(lambda: [model.generate(x, **kwargs) for x in singles], bench.device)

        for measure in (batch_rate, single_rate):
            for model in models.values():  # warm-up
                measure(model)
        batched = interleaved({name: partial(batch_rate, model) for name, model in models.items()}, repeats)
        single = interleaved({name: partial(single_rate, model) for name, model in models.items()}, repeats)
        latency = {name: [1000 / rate for rate in rates] for name, rates in single.items()}
        targets = (BEAM32_TARGET, BEAM1_TARGET) if num_beams == 5 else (None, None)
        for name, values, target in (
            (f"{label} img/s, batch {batch_size}", batched, targets[0]),
            (f"{label} img/s, batch 1", single, targets[1]),
            (f"{label} latency ms/image, batch 1", latency, None),
        ):
            rows.append(make_row("generation", name, values[CAPTIONER], values[VED], target))
            rows.append(extra("generation", name, values[TRANSFORMER], values[VED]))
    return rows


def profile_generation(bench: Bench, batch_size: int, max_new_tokens: int, row_limit: int = 15) -> dict[str, str]:
    """Top operators (self CPU time) of one beam-5 generate() per model, after a warm-up call."""
    batch = evaluation_pixels(bench, batch_size)
    kwargs = generation_kwargs(5, max_new_tokens)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    tables = {}
    for name in (CAPTIONER, VED):
        model = build_model(name, bench).eval()
        with torch.no_grad(), bench.autocast():
            model.generate(batch, **kwargs)
            with profile(activities=activities) as profiler:
                model.generate(batch, **kwargs)
        tables[name] = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)
    return tables


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _number(value: float) -> str:
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}" if value == 0 or abs(value) >= 0.001 else f"{value:.2g}"


def _cell(values: list[float]) -> str:
    median, low, high = spread(values)
    return _number(median) if len(values) == 1 else f"{_number(median)} ({_number(low)}–{_number(high)})"


def format_table(rows: list[dict]) -> str:
    header = ("row", "captioner", "VED", "ratio (median, range)", "target", "met?")
    lines = [header]
    for index, row in enumerate(rows):
        if index == 0 or rows[index - 1]["part"] != row["part"]:
            lines.append((f"[{row['part']}]", "", "", "", "", ""))
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        ratio = f"{row['ratio']:.2f}" if len(row["ratios"]) == 1 else _cell(row["ratios"])
        cells = (row["row"], _cell(row["captioner"]), _cell(row["ved"]), ratio, row["target"] or "", met)
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    cells = ("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines)
    return "\n".join(line.rstrip() for line in cells)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="CaptionerConfig preset giving the ViT and GPT-2 sizes.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repeats per speed row (median reported).")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 64], help="Training batch sizes.")
    parser.add_argument("--train_steps", type=int, default=5, help="Training steps (distinct batches) per repeat.")
    parser.add_argument("--memory_repeats", type=int, default=3, help="Fresh processes per model for peak RSS.")
    parser.add_argument("--minutes", type=float, default=2.0, help="Training minutes per model for quality.")
    parser.add_argument("--quality_runs", type=int, default=1, help="Quality runs (model seeds) per model.")
    parser.add_argument("--generate_batch_size", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=30)
    parser.add_argument("--latency_images", type=int, default=8, help="Images generated one by one per repeat.")
    parser.add_argument("--frozen_images", type=int, default=512, help="Images per frozen-encoder epoch.")
    parser.add_argument(
        "--frozen_presets",
        nargs="+",
        default=None,
        help="Presets for the frozen-encoder part (default: --preset, then vit-gpt2: ViT-Base/16 + GPT-2 small, the "
        "vit-gpt2 checkpoint's architecture, where the frozen encoder is a realistic share of the step).",
    )
    parser.add_argument(
        "--frozen_stages",
        nargs="+",
        default=list(STAGES),
        choices=list(STAGES),
        help="Frozen-encoder stages of the ViT + GPT-2 recipe to measure: decoder (GPT-2 and its cross-attention "
        "train) and cross_attention (only the cross-attention trains).",
    )
    parser.add_argument(
        "--frozen_pair_images",
        type=int,
        default=8,
        help="Images (× their 5 captions) per all-pairs frozen epoch for frozen presets other than --preset.",
    )
    parser.add_argument(
        "--frozen_large_images",
        type=int,
        default=32,
        help="Images per frozen epoch (batch 16) for frozen presets other than --preset.",
    )
    parser.add_argument("--train_images", type=int, default=3000, help="Synthetic training images (quality).")
    parser.add_argument("--test_images", type=int, default=250, help="Synthetic test images (quality).")
    parser.add_argument("--device", default="auto", help="auto (cuda when present, else cpu), cpu or cuda.")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument(
        "--compiled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Add captioner's fast-path rows (compiled bf16 training step, static-cache compiled decoding) to the "
        "training and generation parts (default: on a GPU only; compiling on a CPU takes minutes).",
    )
    parser.add_argument(
        "--compile_ved",
        action="store_true",
        help="With --compiled, also VED's own fast path (torch.compile training, static cache + compiled decoding): "
        "compiles two more models, about a minute each on a GPU.",
    )
    parser.add_argument("--profile", action="store_true", help="Print top operators of beam-5 generation.")
    parser.add_argument("--output", default=None, help="Also write the results (JSON) here.")
    parser.add_argument("--quick", action="store_true", help="Toy sizes, to check that the script runs (seconds).")
    parser.add_argument("--memory_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a memory child process is started with
    if args.quick:
        args.preset, args.repeats, args.batch_sizes, args.train_steps = "tiny", 2, [8], 1
        args.minutes, args.generate_batch_size, args.max_new_tokens, args.latency_images = 0.05, 8, 5, 2
        args.memory_repeats = 1
        args.frozen_images, args.train_images, args.test_images = 32, 64, 16
        args.frozen_presets = ["tiny"]
    if args.frozen_presets is None:
        args.frozen_presets = list(dict.fromkeys([args.preset, "vit-gpt2"]))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.compiled is None:
        args.compiled = args.device.startswith("cuda")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    sizes = (max(args.train_images, args.frozen_images, args.train_steps * max(args.batch_sizes)), 1, args.test_images)
    bench = build_bench(args.preset, sizes, args.device)
    if args.memory_child:
        name, batch_size = args.memory_child
        print(rss_growth_mib(bench, name, int(batch_size)))
        return {}

    results = {"command": " ".join(["python", "bench/bench_vs_ved.py", *args.argv]), "machine": machine()}

    def save() -> None:
        # After every part, so that a run stopped by a time limit keeps the parts it finished.
        if args.output:
            output = Path(args.output)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(results, indent=1))

    print(f"# {results['command']}")
    print("# " + ", ".join(f"{key} {value}" for key, value in results["machine"].items() if value is not None))
    counts = {name: parameter_counts(build_model(name, bench)) for name in MODELS}
    results["parameters"] = counts
    vit, gpt2 = bench.config.vision_config, bench.config.text_config
    print(
        f"# ViT {vit.image_size}px/{vit.patch_size}, hidden {vit.hidden_size}, {vit.num_hidden_layers} layers; "
        f"GPT-2 n_embd {gpt2.n_embd}, {gpt2.n_layer} layers, {gpt2.n_head} heads; vocabulary {gpt2.vocab_size}; "
        f"{'fp16 autocast' if bench.fp16 else 'fp32'} on {bench.device}"
    )
    for name, count in counts.items():
        parts = ", ".join(f"{part} {number:,}" for part, number in count.items() if part != "total")
        print(f"# {name:22s} {count['total']:>10,} parameters ({parts})")
    extra_share = (counts[CAPTIONER]["total"] - counts[VED]["total"]) / counts[VED]["total"]
    decoder_share = counts[TRANSFORMER]["decoder"] / counts[CAPTIONER]["decoder"] - 1
    print(f"# parameters, captioner - VED: {extra_share:+.2%}; Transformer - GPT-2 decoder: {decoder_share:+.2%}")

    rows = results["rows"] = []
    if "training" in args.parts:
        peak = results["matmul_peak"] = matmul_peak(str(bench.device))
        print(f"# matmul peak for MFU: {peak['flops_per_second'] / 1e12:.2f} TFLOP/s ({peak['matmul']}, best of 5)")
        rows += training_rows(bench, args.batch_sizes, args.repeats, args.train_steps)
        save()
        if args.compiled:
            rows += compiled_training_rows(bench, args.batch_sizes, args.repeats, args.train_steps, args.compile_ved)
            save()
            precision = bench.fast_precision + (" autocast" if bench.fast_precision != "fp32" else "")
            print(
                f"# compiled training: captioner under torch.compile (dynamic=False) against VED eager, both in "
                f"{precision}"
                + (", and VED under torch.compile" if args.compile_ved else "")
                + "; the batches padded to one caption length"
            )
    if "memory" in args.parts:
        rows += memory_rows(args, bench)
        print(
            f"# memory: {MEMORY_STEPS} training steps; tensor peak = growth of live tensors above parameters and "
            + (
                "batches (torch.cuda.max_memory_allocated)"
                if bench.fp16
                else "batches, from torch.profiler's allocator events (exact); RSS growth = VmHWM after a reset minus "
                f"VmRSS before the first step, each model in {args.memory_repeats} fresh process(es)"
            )
        )
    if "generation" in args.parts:
        rows += generation_rows(
            bench, args.repeats, args.generate_batch_size, args.max_new_tokens, args.latency_images
        )
        save()
        print(
            f"# generation: random-init models, exactly {args.max_new_tokens} new tokens (min_new_tokens = "
            f"max_new_tokens), batch 1 over {args.latency_images} test images per repeat"
        )
        if args.compiled:
            rows += fast_generation_rows(
                bench,
                args.repeats,
                args.generate_batch_size,
                args.max_new_tokens,
                args.latency_images,
                args.compile_ved,
            )
            save()
            print(
                f"# fast generation: weights in {bench.fast_precision}, captioning.fast_decoding (static cache, "
                "compiled decoding step, warmed up on each shape) against VED eager"
                + (" and VED with its own static cache + compiled step" if args.compile_ved else "")
            )
    if "quality" in args.parts:
        quality, results["quality_scores"] = quality_rows(
            bench, args.minutes, args.batch_sizes[0], args.quality_runs, 5, args.max_new_tokens
        )
        rows += quality
        save()
        print(
            f"# quality: each model trained from scratch for {args.minutes:g} min of wall-clock (data included, "
            f"alternating slices), batch {args.batch_sizes[0]}, AdamW lr 1e-3 inverse-sqrt (200 warm-up steps), label "
            f"smoothing 0.1; {len(bench.splits['test'])} test images, beam 5, max {args.max_new_tokens} new tokens"
        )
    if "frozen" in args.parts:
        results["cache_fill"] = {}
        for preset in args.frozen_presets:
            if preset == args.preset:
                frozen_bench, images, batch_size, variants = bench, args.frozen_images, args.batch_sizes[0], True
            else:
                images, batch_size, variants = args.frozen_large_images, 16, False
                frozen_bench = build_bench(preset, (images, 1, 4), args.device)
            pair_images = images if preset == args.preset else min(images, args.frozen_pair_images)
            vit, gpt2 = frozen_bench.config.vision_config, frozen_bench.config.text_config
            for stage in args.frozen_stages:
                # The variants (no cache, captioner's Transformer decoder) once, in the recipe's second stage.
                stage_variants = variants and stage == "decoder"
                frozen, fill = frozen_rows(frozen_bench, args.repeats, images, batch_size, stage_variants, stage)
                rows += frozen + pair_rows(frozen_bench, args.repeats, pair_images, batch_size, stage)
                results["cache_fill"][f"{preset}, {stage}"] = fill
                save()
                print(
                    f"# frozen ({preset}, {STAGES[stage][1]}): ViT {vit.image_size}px/{vit.patch_size}, hidden "
                    f"{vit.hidden_size}, {vit.num_hidden_layers} layers; GPT-2 n_embd {gpt2.n_embd}, {gpt2.n_layer} "
                    f"layers; {images} images, batch {batch_size}; the epoch that filled the cache ran at "
                    f"{fill['fill_epoch_images_per_second']:.1f} img/s"
                )
    print(format_table(rows))
    if args.profile:
        results["profile"] = profile_generation(bench, args.generate_batch_size, args.max_new_tokens)
        for name, table in results["profile"].items():
            print(f"\n# beam-5 generate(), batch {args.generate_batch_size}: {name}\n{table}")
    save()
    return results


if __name__ == "__main__":
    main()
