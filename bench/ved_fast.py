"""The fast-path rows of bench_vs_ved.py and its MFU: captioner's training step under torch.compile (bf16 autocast on
a GPU) and its static-cache compiled decoding (captioning.fast_decoding), each beside VisionEncoderDecoderModel as a
user runs it (eager, same precision) and, with `compile_ved`, VED's own compiled path; MFU is one step's FLOPs,
counted once with torch.utils.flop_counter, per second, over the device's matmul peak measured in the same run."""

import functools
from functools import partial

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CompileConfig

from bench.ved_matched import (
    CAPTIONER,
    VED,
    Bench,
    TrainingRun,
    build_model,
    evaluation_pixels,
    fixed_batches,
    generation_kwargs,
    interleaved,
    make_row,
    seconds,
    training_rates,
)
from captioning.fast_decoding import enable_fast_decoding, warm_up

# The targets on a GPU, captioner's fast path / VED as a user runs it (eager), same GPU and precision.
FAST_TRAIN_TARGET, FAST_BEAM_TARGET, FAST_GREEDY_TARGET = (">=", 2.5), (">=", 3.0), (">=", 4.0)
# On a CPU: the compiled static-cache greedy path at batch 1 over captioner's own eager path (the small preset).
CPU_GREEDY_TARGET = (">=", 1.5)
GENERATION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# ---------------------------------------------------------------------------------------------------------------
# MFU: FLOPs per step over the measured matmul peak
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def matmul_peak(device: str) -> dict:
    """The device's dense matmul throughput, measured: the best of five timed runs of a large square matmul, bf16
    8192³ on a GPU (fp16's dense peak is the same on A100/H100/H200), fp32 1024³ on a CPU (the precision the CPU rows
    train in). Once per device and run."""
    device = torch.device(device)
    size, dtype, repeats = (8192, torch.bfloat16, 10) if device.type == "cuda" else (1024, torch.float32, 2)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)
    seconds(lambda: torch.mm(a, b, out=out), device)  # warm-up: the BLAS handle and its kernel choice
    best = min(seconds(lambda: [torch.mm(a, b, out=out) for _ in range(repeats)], device) for _ in range(5))
    return {"flops_per_second": 2 * size**3 * repeats / best, "matmul": f"{str(dtype)[6:]} {size}³"}


def step_flops(run: TrainingRun, batch: dict) -> int:
    """FLOPs of one training step of `run` (forward, loss and backward; the optimizer's elementwise update is left
    out, as MFU is usually counted), counted once by torch.utils.flop_counter on the eager model. Attention goes
    through SDPA's math backend here, whose matmuls the counter knows on every device (its fused CPU kernel is not in
    the counter's registry); the FLOPs are those of the fused kernels. The step's gradients are dropped."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        run.backward(batch)
    run.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def mfu_percent(rates: list[float], batch_size: int, flops: int, peak: dict) -> list[float]:
    """Model FLOPs utilisation (%) of each images-per-second figure in `rates`."""
    return [100 * rate / batch_size * flops / peak["flops_per_second"] for rate in rates]


# ---------------------------------------------------------------------------------------------------------------
# Compiled training step
# ---------------------------------------------------------------------------------------------------------------


def same_length(batches: list[dict]) -> list[dict]:
    """`batches` with their captions padded to the longest among them: one shape for every step, so the compiled
    step compiles once (the padding is masked out, and every model trains on these same batches)."""
    length = max(batch["labels"].shape[1] for batch in batches)

    def pad(tensor: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (0, length - tensor.shape[1]), value=value)

    return [
        {
            **batch,
            "labels": pad(batch["labels"], -100),
            "decoder_attention_mask": pad(batch["decoder_attention_mask"], 0),
        }
        for batch in batches
    ]


def compiled_training_rows(
    bench: Bench, batch_sizes: list[int], repeats: int, steps: int, compile_ved: bool = False
) -> list[dict]:
    """Training img/s and MFU at `bench.fast_precision`: captioner under torch.compile against VED eager (and, with
    `compile_ved`, VED under torch.compile, as the Trainer's `torch_compile=True` runs it)."""
    precision, peak = bench.fast_precision, matmul_peak(str(bench.device))
    names = [f"{CAPTIONER}, compiled", VED] + ([f"{VED}, compiled"] if compile_ved else [])
    rows = []
    for batch_size in batch_sizes:
        batches = same_length(fixed_batches(bench, batch_size, steps))
        runs = {
            name: TrainingRun(build_model(name.split(",")[0], bench).train(), bench, precision=precision)
            for name in names
        }
        flops = {name: step_flops(run, batches[0]) for name, run in runs.items()}  # on the eager models
        for name, run in runs.items():
            if name.endswith("compiled"):
                run.model.compile(dynamic=False)
        rates = training_rates(runs, batches, repeats)  # its untimed pass compiles forward and backward
        mfu = {name: mfu_percent(rates[name], batch_size, flops[name], peak) for name in names}
        ours, label = names[0], f"batch {batch_size}, {precision}, compiled"
        target = FAST_TRAIN_TARGET if bench.device.type == "cuda" else None
        rows.append(make_row("training", f"train img/s, {label}", rates[ours], rates[VED], target, ours))
        mfu_row = make_row("training", f"train MFU %, {label}", mfu[ours], mfu[VED], None, ours)
        mfu_row.update(flops_per_step=flops, peak=peak)
        rows.append(mfu_row)
        if compile_ved:
            theirs = names[2]
            rows.append(
                make_row(
                    "training", f"train img/s, {label} [VED compiled]", rates[ours], rates[theirs], None, ours, theirs
                )
            )
            rows.append(
                make_row(
                    "training", f"train MFU %, {label} [VED compiled]", mfu[ours], mfu[theirs], None, ours, theirs
                )
            )
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Static-cache compiled decoding
# ---------------------------------------------------------------------------------------------------------------


def enable_ved_fast_decoding(model) -> None:
    """VED's own fast path, which transformers supports: VisionEncoderDecoderModel takes `_can_compile_fullgraph`
    from its decoder (True for GPT-2), so generate() builds a static cache and compiles the decoding step, with the
    settings `enable_fast_decoding` gives captioner."""
    config = model.generation_config
    config.cache_implementation = "static"
    config.disable_compile = False
    compile_config = CompileConfig(fullgraph=True, dynamic=False)
    compile_config._compile_all_devices = True  # also on a CPU, as captioner's rows there
    config.compile_config = compile_config


def decoding_model(name: str, bench: Bench, dtype: torch.dtype, fast: bool):
    model = build_model(name.split(",")[0], bench).eval().to(dtype)
    if fast and name.startswith(CAPTIONER):
        enable_fast_decoding(model, all_devices=True)
    elif fast:
        enable_ved_fast_decoding(model)
    return model


@torch.inference_mode()
def fast_generation_rows(
    bench: Bench,
    repeats: int,
    batch_size: int,
    max_new_tokens: int,
    latency_images: int,
    compile_ved: bool = False,
) -> list[dict]:
    """The issue's two decoding targets, beam-5 at `batch_size` and greedy one image at a time, with the weights in
    `bench.fast_precision`: captioner's static cache + compiled step against VED eager, against captioner eager, and
    (with `compile_ved`) against VED's own static cache + compiled step. Each model is warmed up (compiled, CUDA
    graphs captured) on its own shapes before timing."""
    precision = bench.fast_precision
    dtype = GENERATION_DTYPES[precision]
    fast, eager = f"{CAPTIONER}, static cache + compiled", CAPTIONER
    variants = {fast: True, eager: False, VED: False}
    if compile_ved:
        variants[f"{VED}, static cache + compiled"] = True
    models = {name: decoding_model(name, bench, dtype, compiled) for name, compiled in variants.items()}
    batch = evaluation_pixels(bench, batch_size).to(dtype)
    singles = list(evaluation_pixels(bench, latency_images).to(dtype).split(1))
    cuda = bench.device.type == "cuda"
    rows = []
    for label, num_beams, inputs, target in (
        (f"beam-5 img/s, batch {batch_size}", 5, [batch], FAST_BEAM_TARGET if cuda else None),
        ("greedy img/s, batch 1", 1, singles, FAST_GREEDY_TARGET if cuda else None),
    ):
        kwargs = generation_kwargs(num_beams, max_new_tokens)

        def images_per_second(model, kwargs: dict = kwargs, inputs: list = inputs) -> float:
            images = sum(len(x) for x in inputs)
            return images / seconds(lambda: [model.generate(x, **kwargs) for x in inputs], bench.device)

        for name, model in models.items():
            if variants[name]:
                warm_up(model, inputs[0], **kwargs)
            images_per_second(model)
        rates = interleaved({name: partial(images_per_second, model) for name, model in models.items()}, repeats)
        name = f"{label}, {precision}"
        rows.append(make_row("generation", f"{name}: static cache + compiled", rates[fast], rates[VED], target, fast))
        cpu_target = CPU_GREEDY_TARGET if not cuda and num_beams == 1 and bench.preset == "small" else None
        rows.append(
            make_row(
                "generation",
                f"{name}: static cache + compiled [over captioner eager]",
                rates[fast],
                rates[eager],
                cpu_target,
                fast,
                eager,
            )
        )
        if compile_ved:
            theirs = f"{VED}, static cache + compiled"
            rows.append(
                make_row(
                    "generation",
                    f"{name}: static cache + compiled [VED compiled]",
                    rates[fast],
                    rates[theirs],
                    None,
                    fast,
                    theirs,
                )
            )
    return rows
