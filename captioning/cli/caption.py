"""`captioner caption`: caption image files, folders, globs and URLs with a saved captioner (a folder or a hub id) and
write one line per caption as text, JSON lines or CSV; a bad input is reported and skipped."""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import csv
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, TextIO

from tqdm.auto import tqdm

from captioning import fast_decoding
from captioning.data.images import SourceError, expand_inputs, read_image
from captioning.fast_decoding import enable_fast_decoding, supports_fast_decoding
from captioning.training.setup import cpu_cores

if TYPE_CHECKING:
    import torch

# torch and transformers load inside the functions, so that `--help` and a bad flag answer at once.

PROG = "captioner caption"
FORMATS = ("text", "jsonl", "csv")
DTYPES = ("float32", "float16", "bfloat16")
COMPILE_CHOICES = ("auto", "yes", "no")
# Options passed to model.generate only when given: everything else comes from the model's generation_config.
GENERATION_OPTIONS = (
    "num_beams",
    "num_return_sequences",
    "max_new_tokens",
    "min_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "length_penalty",
    "no_repeat_ngram_size",
    "repetition_penalty",
)
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p")

# The caption tokenizer is BERT's WordPiece, whose decode puts a space on both sides of every punctuation mark.
_TIDY_RULES = (
    (re.compile(r"\s+([.,!?;:%)\]}])"), r"\1"),  # "the grass ." -> "the grass."
    (re.compile(r"([(\[{$])\s+"), r"\1"),  # "( big )" -> "(big)"
    (re.compile(r"(\w)\s*([-/])\s*(?=\w)"), r"\1\2"),  # "cafe - goer" -> "cafe-goer", "black / white"
    (re.compile(r"(\w)\s*'\s*(?=(?:s|t|re|ve|ll|d|m)\b)"), r"\1'"),  # "dog ' s" -> "dog's", "don ' t" -> "don't"
    (re.compile(r"(\d)\s*\.\s*(?=\d)"), r"\1."),  # "3 . 5" -> "3.5"
    (re.compile(r"(\d)\s*,\s*(?=\d{3}\b)"), r"\1,"),  # "3 , 000" -> "3,000"
    (re.compile(r'"\s*([^"]*?)\s*"'), r'"\1"'),  # '" hi "' -> '"hi"'
)


class UsageError(ValueError):
    """A bad option value, a model that does not load, a device that is not there: exit status 2."""


def tidy_caption(caption: str) -> str:
    """A decoded caption as a person writes it: "a cafe - goer ' s dog ." becomes "a cafe-goer's dog."."""
    caption = " ".join(caption.split())
    for pattern, replacement in _TIDY_RULES:
        caption = pattern.sub(replacement, caption)
    return caption


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def resolve_device(name: str) -> torch.device:
    """
    The torch device that `--device` names: `cpu`, `cuda`, `cuda:N`, `mps`, or `auto` (CUDA, else MPS, else CPU).

    Raises:
        `UsageError`: a name torch does not know, or a device this machine does not have.
    """
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise UsageError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N, mps or auto.") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {name}: PyTorch {torch.__version__} sees no CUDA GPU on this machine; use --device cpu "
                "(or auto)."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}.")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS (Apple GPU) is not available here; use --device cpu (or auto).")
    elif device.type not in ("cpu", "cuda", "mps"):
        backend = getattr(torch, device.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise UsageError(f"--device {name}: no {device.type} device is available; use cpu, cuda, mps or auto.")
    return device


def load_captioner(
    model: str,
    device: torch.device,
    dtype: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    quiet: bool = False,
):
    """
    The model (in eval mode, on `device`) and processor saved in a folder or a hub repository.

    Raises:
        `UsageError`: a missing folder, or a folder/repository without a loadable model and processor.
    """
    import torch
    from transformers import AutoModel, AutoProcessor
    from transformers.utils import logging as hf_logging

    import modeling_captioner  # noqa: F401  (registers the Auto classes)

    path = os.path.expanduser(model)
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1 or (os.sep != "/" and os.sep in path)
    if not os.path.exists(path) and looks_local:
        raise UsageError(f"--model {model}: no such folder; give a saved model folder or a hub id (user/name).")
    model_kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        model_kwargs["dtype"] = getattr(torch, dtype)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        loaded = AutoModel.from_pretrained(path, **model_kwargs)
        processor = AutoProcessor.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(f"--model {model}: cannot load a model and processor from it: {first}") from error
    finally:
        if quiet and bars_were_on:
            hf_logging.enable_progress_bar()
    if not hasattr(loaded, "generate"):
        raise UsageError(f"--model {model}: {type(loaded).__name__} has no generate(); it is not a captioning model.")
    return loaded.to(device).eval(), processor


def generation_kwargs(options: dict, model) -> dict:
    """
    What to pass to `model.generate`: the options the user gave (None means not given), checked against the model's
    generation_config so that a flag that would be ignored, or fail mid-run, is an error before any image is read.

    Raises:
        `UsageError`: e.g. `--temperature` without sampling, `--num_return_sequences` above `--num_beams`, or
        `--max_new_tokens` beyond the decoder's positions.
    """
    chosen = {name: value for name, value in options.items() if name in GENERATION_OPTIONS and value is not None}
    defaults = model.generation_config
    sampling = chosen.get("do_sample", bool(getattr(defaults, "do_sample", False)))
    num_beams = chosen.get("num_beams", getattr(defaults, "num_beams", None) or 1)
    ignored = [f"--{name}" for name in SAMPLING_OPTIONS if name in chosen]
    if ignored and not sampling:
        verb = "matters" if len(ignored) == 1 else "matter"
        raise UsageError(f"{', '.join(ignored)} only {verb} when sampling; add --do_sample (or leave them out).")
    if "length_penalty" in chosen and num_beams < 2:
        raise UsageError("--length_penalty only matters in beam search; add --num_beams 2 or more (or leave it out).")
    count = chosen.get("num_return_sequences", 1)
    if count > 1 and not sampling and num_beams < count:
        raise UsageError(
            f"--num_return_sequences {count} needs --num_beams {count} or more (beam search keeps that many "
            f"candidates; this run has {num_beams}), or --do_sample."
        )
    config = model.config
    max_new_tokens = chosen.get("max_new_tokens")
    if max_new_tokens is not None:
        # The decoder's learned positions hold the start token and the caption; past them generate() fails.
        if getattr(config, "decoder_type", None) in ("transformer", "gpt2"):
            positions = config.max_position_embeddings
            if max_new_tokens >= positions:
                raise UsageError(
                    f"--max_new_tokens {max_new_tokens} is more than this model's decoder holds "
                    f"(max_position_embeddings={positions}, the start token included); use at most {positions - 1}."
                )
        # The model's generation_config sets max_length; max_new_tokens wins anyway, this only spares a warning.
        chosen["max_length"] = None
    try:
        copy.deepcopy(defaults).update(**chosen)
    except ValueError as error:
        raise UsageError(f"These generation options do not fit together: {_one_line(error)}") from error
    return chosen


def default_num_workers(device: torch.device) -> int:
    """Reading threads when `--num_workers` is not given: 4 (downloads wait on the network more than on a core), and
    on a GPU one per core up to 8, so that JPEG decoding keeps up with a compiled decoder."""
    if device.type != "cuda":
        return 4
    return max(4, min(8, cpu_cores()))


def _prefetched(sources: list[str], prepare: Callable, workers: int, window: int) -> Iterator[tuple[str, Future]]:
    """
    (source, future of prepare(source)) in input order, with at most `window` sources read ahead.

    Memory stays bounded however many sources there are: a source is submitted only when one leaves the window, so at
    most `window` prepared results exist beyond those the consumer holds. A consumer ahead of the readers blocks in
    `future.result()` (a lock wait, not a spin).
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="captioner-read")
    try:
        remaining = iter(sources)
        queue = collections.deque(
            (source, pool.submit(prepare, source)) for source in itertools.islice(remaining, window)
        )
        while queue:
            source, future = queue.popleft()
            for source_ahead in itertools.islice(remaining, 1):
                queue.append((source_ahead, pool.submit(prepare, source_ahead)))
            yield source, future
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def caption_sources(
    model,
    processor,
    sources: list[str],
    generate_kwargs: dict | None = None,
    batch_size: int = 16,
    num_workers: int = 4,
    timeout: float = 10.0,
    max_bytes: int = 20_000_000,
    on_error: Callable[[SourceError], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    pad_to: int | None = None,
    warm_up: Callable[[torch.Tensor], None] | None = None,
) -> Iterator[tuple[str, list[str]]]:
    r"""
    Caption image files and URLs in batches: `(source, captions)` for every source that could be read, in input
    order, with `num_return_sequences` captions each (best first), as `processor.batch_decode` gives them.

    Sources are read (downloaded, decoded, preprocessed) by `num_workers` threads, at most two batches ahead of the
    model, so reading overlaps generation.

    Args:
        model (`CaptionerForConditionalGeneration` or any model with `generate(pixel_values, ...)`):
            In eval mode, on its device; pixel values are sent to the model's device and dtype.
        processor (`CaptionerProcessor`):
            Its `processor(images=[...])` gives `pixel_values`, its `batch_decode` gives captions.
        sources (`list[str]`):
            Image file paths and http(s) URLs (see `captioning.data.images.expand_inputs`).
        generate_kwargs (`dict`, *optional*):
            Passed on to `model.generate` (see `generation_kwargs`).
        batch_size (`int`, *optional*, defaults to 16):
            Images per `generate` call.
        num_workers (`int`, *optional*, defaults to 4):
            Threads that read sources.
        timeout (`float`, *optional*, defaults to 10.0):
            Seconds allowed for one URL's download.
        max_bytes (`int`, *optional*, defaults to 20 000 000):
            The largest URL body read.
        on_error (`Callable[[SourceError], None]`, *optional*):
            Called with every source that cannot be read (its message names it); without it, the error is raised.
        on_progress (`Callable[[int], None]`, *optional*):
            Called with the number of sources finished (captioned or failed), batch by batch.
        pad_to (`int`, *optional*):
            Pad a smaller batch (the last one) to this many images by repeating its last image, and drop the extra
            rows' captions: a compiled decoding step is built for one batch shape and would be rebuilt for another.
        warm_up (`Callable[[torch.Tensor], None]`, *optional*):
            Called once with the first batch's pixel values (padded, on the model's device) before it is captioned,
            e.g. to compile the decoding step for that shape (`captioning.fast_decoding.warm_up`).
    """
    import torch

    generate_kwargs = generate_kwargs or {}

    def prepare(source: str) -> torch.Tensor:
        image = read_image(source, timeout=timeout, max_bytes=max_bytes)
        try:
            return processor(images=[image], return_tensors="pt")["pixel_values"]
        except (OSError, ValueError) as error:
            raise SourceError(f"{source}: the processor cannot prepare it: {_one_line(error)}") from error

    warmed_up = warm_up is None

    def generate(batch: list[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, list[str]]]:
        nonlocal warmed_up
        images = [pixels for _, pixels in batch]
        if pad_to is not None and len(images) < pad_to:
            images += images[-1:] * (pad_to - len(images))
        pixel_values = torch.cat(images).to(device=model.device, dtype=model.dtype)
        if not warmed_up:
            warm_up(pixel_values)
            warmed_up = True
        with torch.inference_mode():
            ids = model.generate(pixel_values, **generate_kwargs)
        captions = processor.batch_decode(ids, skip_special_tokens=True)
        per_image = len(captions) // len(images)
        for index, (source, _) in enumerate(batch):
            yield source, captions[index * per_image : (index + 1) * per_image]

    batch: list[tuple[str, torch.Tensor]] = []
    failed = 0
    for source, future in _prefetched(sources, prepare, max(1, num_workers), 2 * batch_size):
        try:
            batch.append((source, future.result()))
        except SourceError as error:
            if on_error is None:
                raise
            on_error(error)
            failed += 1
        if len(batch) == batch_size:
            yield from generate(batch)
            if on_progress is not None:
                on_progress(len(batch) + failed)
            batch, failed = [], 0
    if batch:
        yield from generate(batch)
    if on_progress is not None and (batch or failed):
        on_progress(len(batch) + failed)


def caption_writer(stream: TextIO, output_format: str) -> Callable[[str, list[str]], None]:
    """
    A function that writes one image's captions to `stream` in `output_format`:

    - `text`: one line per caption, `<source>\\t<caption>` (several lines per image with `--num_return_sequences`);
    - `jsonl`: one JSON object per image, `{"image": source, "caption": best, "captions": [all, best first]}`;
    - `csv`: a header `image,caption`, then one row per caption (quoted where needed).
    """
    if output_format == "jsonl":

        def write(source: str, captions: list[str]) -> None:
            record = {"image": source, "caption": captions[0], "captions": captions}
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")

    elif output_format == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["image", "caption"])

        def write(source: str, captions: list[str]) -> None:
            writer.writerows([source, caption] for caption in captions)

    elif output_format == "text":

        def write(source: str, captions: list[str]) -> None:
            stream.writelines(f"{source}\t{' '.join(caption.split())}\n" for caption in captions)

    else:
        raise ValueError(f"Unknown output format {output_format!r}; expected one of {', '.join(FORMATS)}.")
    return write


def positive_int(text: str) -> int:
    """An argparse type: a whole number ≥ 1 (the caption and demo commands share it)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `caption` subcommand's options."""
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="IMAGE",
        help="Image files, folders (the images directly inside; see --recursive), globs (quoted or not; ** for "
        "subfolders) and http(s) URLs.",
    )
    parser.add_argument("-m", "--model", required=True, help="A saved model folder, or a hub id (user/name).")
    parser.add_argument("--revision", help="Hub branch, tag or commit of --model.")
    parser.add_argument("--trust_remote_code", action="store_true", help="Run the model's own code from its folder.")
    parser.add_argument(
        "--input_list", metavar="FILE", help="Also caption the inputs listed in FILE, one a line (- for stdin)."
    )
    parser.add_argument("--recursive", action="store_true", help="A folder contributes the images in its subfolders.")
    parser.add_argument("-o", "--output", metavar="FILE", help="Write captions here instead of stdout.")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="text: <image>\\t<caption> lines (the default, unless --output ends in .jsonl or .csv).",
    )
    parser.add_argument("--raw", action="store_true", help="Captions as the tokenizer decodes them ('grass .').")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="No progress bar, warm-up or throughput lines; errors and notes are still reported.",
    )
    parser.add_argument("--batch_size", type=positive_int, default=16, help="Images per generate() call.")
    parser.add_argument(
        "--num_workers",
        type=positive_int,
        help="Threads that read and download (default: 4; on a CUDA GPU one per core, 4 to 8).",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default: a GPU if any).")
    parser.add_argument(
        "--compile",
        choices=COMPILE_CHOICES,
        default="auto",
        help="Decode with a static cache and a compiled step, warmed up on the first batch. auto (the default): on "
        "a CUDA GPU, for the Transformer and GPT-2 decoders; yes: on any device (compiling takes a while on a CPU); "
        "no: eager.",
    )
    parser.add_argument("--dtype", choices=DTYPES, help="Cast the model's weights (default: as saved).")
    parser.add_argument("--timeout", type=_positive_float, default=10.0, help="Seconds for one URL's download.")
    parser.add_argument("--max_bytes", type=positive_int, default=20_000_000, help="Largest URL body to read.")
    generation = parser.add_argument_group("generation (default: the model's generation_config)")
    generation.add_argument("--num_beams", type=positive_int)
    generation.add_argument("-n", "--num_return_sequences", type=positive_int, help="Captions per image, best first.")
    generation.add_argument("--max_new_tokens", type=positive_int)
    generation.add_argument("--min_new_tokens", type=_non_negative_int)
    generation.add_argument("--do_sample", action="store_true", default=None, help="Sample instead of searching.")
    generation.add_argument("--temperature", type=_positive_float)
    generation.add_argument("--top_k", type=positive_int)
    generation.add_argument("--top_p", type=_probability)
    generation.add_argument("--length_penalty", type=float, help="Beam search: > 0 favours longer captions.")
    generation.add_argument("--no_repeat_ngram_size", type=positive_int)
    generation.add_argument("--repetition_penalty", type=_positive_float)
    generation.add_argument("--seed", type=int, help="Seed torch, so that sampling repeats.")
    parser.set_defaults(run=run)


def set_up_decoding(model, choice: str, device: torch.device, note: Callable[[str], None]) -> bool:
    """
    Apply `--compile choice` to `model.generation_config`; returns whether generation now takes the compiled
    static-cache path (which wants a warm-up and batches of one shape). A `yes` the decoder cannot honour is a
    `note`, and the model keeps its eager path.
    """

    if choice == "no":
        model.generation_config.disable_compile = True
        return False
    if not supports_fast_decoding(model):
        if choice == "yes":
            decoder = getattr(model.config, "decoder_type", type(model).__name__)
            note(
                f"--compile yes: the {decoder} decoder has no static-cache decoding step to compile; captioning "
                "with its eager path."
            )
        return False
    if choice == "auto" and device.type != "cuda":
        return False
    # transformers compiles on accelerators by itself; `yes` asks for it on a CPU as well.
    return enable_fast_decoding(model, compile=True, all_devices=choice == "yes")


def warm_up_decoding(
    model, pixel_values: torch.Tensor, generate_kwargs: dict, strict: bool, note: Callable[[str], None]
) -> bool:
    """
    Compile the decoding step for `pixel_values`' shape (`captioning.fast_decoding.warm_up`); returns whether the
    fast path stays on. Where it does not compile, `strict` (`--compile yes`) is an error; otherwise a `note`, and
    the model goes back to its eager path.

    Raises:
        `UsageError`: with `strict`, the step does not compile.
    """
    import torch

    device = pixel_values.device
    cuda = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    try:
        # The warm-up's samples leave --seed's random stream alone: the captions are those of --compile no.
        with torch.random.fork_rng(devices=cuda):
            fast_decoding.warm_up(model, pixel_values, **generate_kwargs)
    except Exception as error:  # torch.compile fails in many ways: no C++ compiler or Triton, an unsupported op, ...
        reason = _one_line((str(error).strip().splitlines() or [type(error).__name__])[0])
        if strict:
            raise UsageError(
                f"--compile yes: the decoding step does not compile here ({reason}); use --compile no."
            ) from error
        fast_decoding.disable_fast_decoding(model)
        note(f"the decoding step does not compile here ({reason}); captioning eagerly (--compile no skips this).")
        return False
    return True


def _format_of(output: str | None) -> str:
    suffix = os.path.splitext(output or "")[1].lower()
    return {".jsonl": "jsonl", ".csv": "csv"}.get(suffix, "text")


def _read_input_list(name: str) -> list[str]:
    try:
        if name == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(name, encoding="utf-8") as file:
                lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--input_list {name}: cannot read it ({error}).") from error
    return [line.strip() for line in lines if line.strip()]


def run(args: argparse.Namespace) -> int:
    """`captioner caption`: returns 0 when every input was captioned, 1 when any failed, 2 for a usage error."""
    inputs = list(args.inputs) + (_read_input_list(args.input_list) if args.input_list else [])
    if not inputs:
        raise UsageError("no images given; name image files, folders, globs or URLs (or --input_list FILE).")

    def report(error: Exception) -> None:
        tqdm.write(f"{PROG}: skipped: {_one_line(error)}", file=sys.stderr)

    def note(message: str) -> None:
        tqdm.write(f"{PROG}: note: {message}", file=sys.stderr)

    def inform(message: str) -> None:
        if not args.quiet:
            tqdm.write(f"{PROG}: {message}", file=sys.stderr)

    device = resolve_device(args.device)
    sources, expand_errors = expand_inputs(inputs, recursive=args.recursive)
    for error in expand_errors:
        report(error)
    if not sources:
        tqdm.write(f"{PROG}: nothing to caption: none of the inputs named an image.", file=sys.stderr)
        return 1
    model, processor = load_captioner(
        args.model, device, args.dtype, args.revision, args.trust_remote_code, args.quiet
    )
    generate_kwargs = generation_kwargs(vars(args), model)
    import torch

    if args.seed is not None:
        torch.manual_seed(args.seed)
    compiled = set_up_decoding(model, args.compile, device, note)
    warm_up_seconds = 0.0

    def warm_up(pixel_values: torch.Tensor) -> None:
        nonlocal warm_up_seconds
        started = time.perf_counter()
        try:
            if warm_up_decoding(model, pixel_values, generate_kwargs, strict=args.compile == "yes", note=note):
                seconds = time.perf_counter() - started
                inform(f"fast decoding warmed up in {seconds:.1f} s (batches of {len(pixel_values)} images).")
        finally:
            warm_up_seconds = time.perf_counter() - started

    failures = len(expand_errors)
    captioned = 0

    def skip(error: SourceError) -> None:
        nonlocal failures
        failures += 1
        report(error)

    with contextlib.ExitStack() as stack:
        if args.output:
            try:
                stream = stack.enter_context(open(args.output, "w", encoding="utf-8", newline=""))
            except OSError as error:
                raise UsageError(f"--output {args.output}: cannot write it ({error.strerror}).") from error
        else:
            stream = sys.stdout
        # Many images: a bar on stderr (never stdout, which holds the captions) unless --quiet.
        progress = stack.enter_context(
            tqdm(
                total=len(sources),
                unit="image",
                desc="captioning",
                file=sys.stderr,
                disable=args.quiet or len(sources) <= args.batch_size,
                dynamic_ncols=True,
            )
        )
        write = caption_writer(stream, args.format or _format_of(args.output))
        results = caption_sources(
            model,
            processor,
            sources,
            generate_kwargs,
            batch_size=args.batch_size,
            num_workers=args.num_workers or default_num_workers(device),
            timeout=args.timeout,
            max_bytes=args.max_bytes,
            on_error=skip,
            on_progress=progress.update,
            pad_to=min(args.batch_size, len(sources)) if compiled else None,
            warm_up=warm_up if compiled else None,
        )
        started = time.perf_counter()
        for source, captions in results:
            write(source, captions if args.raw else [tidy_caption(caption) for caption in captions])
            captioned += 1
            if captioned % args.batch_size == 0:
                stream.flush()
        stream.flush()
        seconds = time.perf_counter() - started - warm_up_seconds
    rate = captioned / seconds if seconds > 0 else 0.0
    excluded = f"the {warm_up_seconds:.1f} s warm-up excluded" if compiled else "eager decoding, no warm-up"
    inform(f"{captioned} image(s) captioned in {seconds:.2f} s ({rate:.2f} images/s; {excluded}), {failures} skipped.")
    if failures:
        tqdm.write(f"{PROG}: {failures} input(s) failed, {captioned} image(s) captioned.", file=sys.stderr)
    return 1 if failures else 0


__all__ = [
    "COMPILE_CHOICES",
    "FORMATS",
    "UsageError",
    "add_arguments",
    "caption_sources",
    "caption_writer",
    "default_num_workers",
    "generation_kwargs",
    "load_captioner",
    "resolve_device",
    "run",
    "set_up_decoding",
    "tidy_caption",
    "warm_up_decoding",
]
