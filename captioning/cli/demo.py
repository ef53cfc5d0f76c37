"""A one-minute look at the whole round trip: build a tokenizer and a tiny captioner, teach it eight rendered scenes on
the CPU, save it as a 🤗 model folder, reload it with AutoModel/AutoProcessor and caption with beam search."""

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor

from captioning.cli.caption import positive_int
from captioning.data.synthetic import all_scenes, render_scene
from modeling_captioner import (
    CaptionerConfig,
    CaptionerForConditionalGeneration,
    CaptionerProcessor,
    build_image_processor,
)
from tokenization import build_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `demo` subcommand's options."""
    parser.add_argument("--output_dir", default="outputs/demo", help="Where the model folder is saved.")
    parser.add_argument("--encoder", choices=["resnet", "vit"], default="resnet")
    parser.add_argument("--decoder", choices=["transformer", "gpt2"], default="transformer")
    parser.add_argument("--steps", type=positive_int, default=150, help="Optimizer steps on the eight scenes.")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="captioner demo", description=__doc__)
    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, str]:
    """Runs the demo; returns {reference caption: generated caption} for the eight scenes."""
    return demo(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    demo(args)
    return 0


def demo(args: argparse.Namespace) -> dict[str, str]:
    torch.manual_seed(args.seed)
    scenes = all_scenes()[::3][:8]
    captions = [scene.caption for scene in scenes]
    tokenizer = build_tokenizer(captions, vocab_size=200)
    config = CaptionerConfig.from_preset("tiny", encoder=args.encoder, decoder=args.decoder, tokenizer=tokenizer)
    model = CaptionerForConditionalGeneration(config)
    processor = CaptionerProcessor(build_image_processor(config), tokenizer)
    batch = processor(images=[render_scene(scene) for scene in scenes], text_target=captions)

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(
        f"trained {sum(p.numel() for p in model.parameters()):,} parameters for {args.steps} steps in "
        f"{time.perf_counter() - start:.1f}s; final loss {loss.item():.4f}"
    )

    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    model = AutoModel.from_pretrained(output_dir).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    inputs = processor(images=[render_scene(scene) for scene in scenes])
    generated = processor.batch_decode(model.generate(**inputs, num_beams=5), skip_special_tokens=True)
    results = {}
    for caption, reference in zip(generated, captions, strict=True):
        results[reference] = caption
        print(f"{'ok ' if caption == reference else 'MISS'} {caption!r:40} reference {reference!r}")
    print(f"{sum(c == r for r, c in results.items())}/{len(results)} captions match; model folder: {output_dir}")
    return results


if __name__ == "__main__":
    main()
