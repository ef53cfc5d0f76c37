"""The `captioner` command (also `python -m captioning.cli`): one entry point, one subcommand per job. Each job's module
has `add_arguments(parser)`, which also sets `run(args) -> exit status` as the parser's default."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from captioning.cli import attention, caption, demo
from captioning.data.web import shards
from captioning.evaluation import command as evaluation

# Subcommand name -> (module with add_arguments(parser), one-line help). A new job is one more entry.
SUBCOMMANDS = {
    "caption": (caption, "Caption image files, folders, globs or URLs; print text, JSON lines or CSV."),
    "evaluate": (evaluation, "Score a saved captioner on a dataset split (BLEU, METEOR, ROUGE-L, CIDEr-D)."),
    "attention": (attention, "Caption an image and draw the attention map of every word."),
    "demo": (demo, "Train a tiny captioner on eight scenes, save, reload and caption them (a minute on a CPU)."),
    "shards": (shards, "Download a url–caption file into webdataset shards."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description="Image captioning with 🤗-native captioner models.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in SUBCOMMANDS.items():
        module.add_arguments(
            subcommands.add_parser(name, help=summary, description=module.__doc__.split("\n\n")[0].replace("\n", " "))
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """
    Runs `captioner COMMAND ...` and returns its exit status: 0 on success, 1 when some inputs failed (each named
    on stderr), 2 for a usage error (a one-line sentence on stderr).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help (0) or argparse's own usage error (2), returned rather than raised
        return exit.code if isinstance(exit.code, int) else 2
    try:
        return args.run(args)
    except caption.UsageError as error:
        print(f"captioner {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`captioner caption ... | head`): stop quietly, as a Unix filter does.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"captioner {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
