"""Command line: `python -m tokenization --captions FILE --vocab-size N --output DIR` builds and saves a tokenizer."""

import argparse
import sys
from pathlib import Path

from .builder import DEFAULT_MODEL_MAX_LENGTH, DEFAULT_VOCAB_SIZE, build_tokenizer, unk_rate
from .captions import SUPPORTED_EXTENSIONS, read_captions


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser of `python -m tokenization`."""
    parser = argparse.ArgumentParser(
        prog="python -m tokenization",
        description="Build a caption WordPiece tokenizer (a pruned BERT vocabulary) and save it for AutoTokenizer.",
    )
    parser.add_argument(
        "--captions",
        action="extend",
        nargs="+",
        required=True,
        metavar="FILE",
        help=f"caption file(s) ({', '.join(SUPPORTED_EXTENSIONS)}); repeat the flag or list several",
    )
    parser.add_argument(
        "--vocab-size",
        type=_positive_int,
        default=DEFAULT_VOCAB_SIZE,
        metavar="N",
        help=f"number of pieces, special tokens included (default: {DEFAULT_VOCAB_SIZE})",
    )
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="directory to save the tokenizer to")
    parser.add_argument(
        "--base-vocab",
        default=None,
        metavar="PATH_OR_ID",
        help="vocab.txt path or Hugging Face Hub id to take pieces from (default: packaged bert-base-uncased)",
    )
    parser.add_argument(
        "--min-frequency",
        type=_positive_int,
        default=1,
        metavar="K",
        help="drop corpus pieces seen fewer than K times (default: 1)",
    )
    parser.add_argument(
        "--model-max-length",
        type=_positive_int,
        default=DEFAULT_MODEL_MAX_LENGTH,
        metavar="L",
        help=f"model_max_length stored in the tokenizer config (default: {DEFAULT_MODEL_MAX_LENGTH})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """
    Runs the command.

    Args:
        argv (`list[str]`, *optional*):
            The arguments, without the program name; `sys.argv[1:]` when `None`.

    Returns:
        `int`: 0 on success. Bad flags and unusable inputs exit with status 2 and a one-line message on stderr.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.output.exists() and not args.output.is_dir():
            # save_pretrained only logs this case and returns, which would look like success.
            raise ValueError(f"output '{args.output}' exists and is not a directory")
        captions = [caption for path in args.captions for caption in read_captions(path)]
        tokenizer = build_tokenizer(
            captions,
            vocab_size=args.vocab_size,
            base_vocab=args.base_vocab,
            min_frequency=args.min_frequency,
            model_max_length=args.model_max_length,
        )
        tokenizer.save_pretrained(args.output)
    except (OSError, ValueError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    rate = unk_rate(tokenizer, captions)
    print(f"vocabulary: {len(tokenizer)} pieces; [UNK] rate on {len(captions)} captions: {rate:.2%}")
    print(f"saved to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
