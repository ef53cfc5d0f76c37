"""The fast decoding path: transformers' static key/value cache with a compiled decoding step.

generate() compiles the model's one-token step (`get_compiled_call`) when the cache is static and the model says its
forward compiles whole (`_can_compile_fullgraph`). On a GPU that removes the Python and kernel-launch time that bounds
small-batch decoding; the ids are those of the eager dynamic-cache path (tests/test_fast_decoding.py). The image encoder,
run once per generate() call, is compiled alongside (without CUDA graphs: its output must outlive the next call).

Usage:

```python
>>> from captioning.fast_decoding import enable_fast_decoding, warm_up
>>> enable_fast_decoding(model)  # sets model.generation_config
>>> warm_up(model, pixel_values[:1], num_beams=5)  # compiles once, before the timed or served work
>>> ids = model.generate(pixel_values, num_beams=5)
```
"""

from __future__ import annotations

import time

import torch
from transformers import CompileConfig

# The LSTM decoder's cache is its recurrent state, one step at a time; it has no static key/value layout.
STATIC_CACHE_DECODERS = ("transformer", "gpt2")


def supports_fast_decoding(model) -> bool:
    """Whether `model`'s decoder has the static-cache path (the Transformer and GPT-2 decoders)."""
    return getattr(model.config, "decoder_type", None) in STATIC_CACHE_DECODERS


def enable_fast_decoding(
    model, *, compile: bool = True, all_devices: bool = False, mode: str | None = None, dynamic: bool | None = False
) -> bool:
    """Make `model.generate()` use a static cache and, with `compile`, a compiled decoding step.

    Args:
        model: a `CaptionerForConditionalGeneration`.
        compile (`bool`, *optional*, defaults to `True`): compile the decoding step with `torch.compile`.
        all_devices (`bool`, *optional*, defaults to `False`): compile on every device; generate() otherwise compiles
            on accelerators only (CUDA, XPU, MPS, ...), as on a CPU compilation seldom repays its start-up.
        mode (`str`, *optional*): torch.compile's mode; `None` leaves transformers' default ("reduce-overhead", i.e.
            CUDA graphs, on a GPU).
        dynamic (`bool`, *optional*, defaults to `False`): compile for dynamic shapes. Static shapes compile once per
            (batch size, beams) and run fastest.

    Returns:
        `True` when the fast path is set; `False` for a decoder without it (the LSTM), whose generation config is left
        as it is.
    """
    if not supports_fast_decoding(model):
        return False
    generation_config = model.generation_config
    generation_config.cache_implementation = "static"
    generation_config.disable_compile = not compile
    model.encoder.__dict__.pop("forward", None)
    if compile:
        options = {"fullgraph": True, "dynamic": dynamic}
        if mode is not None:
            options["mode"] = mode
        compile_config = CompileConfig(**options)
        # A private flag of transformers' CompileConfig, read by `_valid_auto_compile_criteria`: coupling 10 in
        # modeling_captioner.py's COUPLINGS TO TRANSFORMERS' INTERNALS.
        compile_config._compile_all_devices = all_devices
        generation_config.compile_config = compile_config
        if all_devices or model.device.type != "cpu":  # where generate() compiles the step
            # At batch 1 the encoder's eager Python costs as much as several decoding steps.
            model.encoder.forward = torch.compile(model.encoder.forward, fullgraph=True, dynamic=dynamic)
    return True


def disable_fast_decoding(model) -> None:
    """Back to the eager dynamic-cache path."""
    generation_config = model.generation_config
    generation_config.cache_implementation = None
    generation_config.compile_config = None
    generation_config.disable_compile = True
    model.encoder.__dict__.pop("forward", None)  # the compiled encoder, where enable_fast_decoding set one


@torch.inference_mode()
def warm_up(model, pixel_values: torch.Tensor, repeats: int = 2, **generate_kwargs) -> float:
    """Run generate() `repeats` times on `pixel_values` (which fixes the batch size the compiled step is built for)
    and return the seconds taken: compilation, CUDA-graph capture and allocator growth happen here, not in the first
    timed or served batch."""
    start = time.perf_counter()
    for _ in range(repeats):
        model.generate(pixel_values, **generate_kwargs)
    if pixel_values.device.type == "cuda":
        torch.cuda.synchronize(pixel_values.device)
    return time.perf_counter() - start
