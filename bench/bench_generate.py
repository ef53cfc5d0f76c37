"""Beam-search generation throughput on CPU: the Show-Attend-Tell LSTM decoder against the Transformer decoder of
similar parameter count, same backbone and bridge, same images, in the same run.

    python bench/bench_generate.py [--batch_size 32] [--num_beams 5] [--repeats 5] [--max_new_tokens 20]"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def decoder_parameters(model) -> int:
    return sum(p.numel() for p in model.decoder.parameters())


def build(decoder: str, tokenizer, **overrides):
    import torch

    from modeling_captioner import CaptionerConfig, CaptionerForConditionalGeneration

    torch.manual_seed(0)
    config = CaptionerConfig.from_preset("small", decoder=decoder, tokenizer=tokenizer, **overrides)
    return CaptionerForConditionalGeneration(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_beams", type=int, default=5)
    parser.add_argument("--max_new_tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from captioning.data import load_caption_splits
    from modeling_captioner import CaptionerProcessor, build_image_processor
    from tokenization import build_tokenizer

    split = load_caption_splits("synthetic", sizes=(256, args.batch_size, 8))
    tokenizer = build_tokenizer(split["train"].all_captions(), vocab_size=1000)
    transformer = build("transformer", tokenizer)
    # The LSTM's width is chosen so that its decoder has about as many parameters as the Transformer decoder.
    target = decoder_parameters(transformer)
    candidates = [build("lstm", tokenizer, rnn_hidden_size=h, embed_dim=128) for h in (128, 160, 192, 224, 256)]
    lstm = min(candidates, key=lambda m: abs(decoder_parameters(m) - target))
    images = [split["validation"][i]["image"] for i in range(args.batch_size)]
    processor = CaptionerProcessor(build_image_processor(transformer.config), tokenizer)
    pixel_values = processor(images=images)["pixel_values"]

    # min_new_tokens keeps random models generating the full length, so both decoders do the same number of steps.
    kwargs = {
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.max_new_tokens,
    }
    rates: dict[str, list[float]] = {"transformer": [], "lstm": []}
    with torch.no_grad():
        for model in (transformer, lstm):
            model.generate(pixel_values, **kwargs)  # warm-up
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            for name, model in (("transformer", transformer), ("lstm", lstm)):
                start = time.perf_counter()
                model.generate(pixel_values, **kwargs)
                rates[name].append(args.batch_size / (time.perf_counter() - start))

    print(f"# {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"beam {args.num_beams}, batch {args.batch_size}, {args.max_new_tokens} new tokens, {args.repeats} repeats")
    for name, model in (("transformer", transformer), ("lstm", lstm)):
        values = rates[name]
        detail = "" if name == "transformer" else f", hidden {model.config.rnn_hidden_size}"
        print(
            f"  {name:12s} decoder {decoder_parameters(model):,} parameters{detail}: "
            f"{statistics.median(values):.1f} img/s (range {min(values):.1f}–{max(values):.1f})"
        )
    ratio = statistics.median(rates["lstm"]) / statistics.median(rates["transformer"])
    print(f"  lstm / transformer throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
