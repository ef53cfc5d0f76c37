"""Share a trained captioner on the 🤗 Hub: CHECKPOINT (a model folder) → the files that belong on the Hub and a
generated model card → REPO_ID. With --dry_run DIR, exactly those files are written to DIR and nothing is uploaded.
The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT picks another Hub."""

import argparse
import sys

from captioning.hub.upload import PushToHubError, push_to_hub


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="A captioner model folder: train.py's --output_dir, or a save_pretrained folder.",
    )
    parser.add_argument(
        "repo_id", metavar="REPO_ID", help="NAMESPACE/NAME: your user name or an organisation, then the model name."
    )
    parser.add_argument(
        "--private", action="store_true", help="Create the repository private (an existing one keeps its visibility)."
    )
    parser.add_argument(
        "--revision",
        "--branch",
        dest="branch",
        default=None,
        help="Branch to commit to, created from main if missing.",
    )
    parser.add_argument("--commit_message", default=None, help="Default: 'Upload captioner model'.")
    parser.add_argument("--license", default="apache-2.0", help="License id written in the model card.")
    parser.add_argument(
        "--dry_run",
        metavar="DIR",
        default=None,
        help="Write exactly what would be uploaded to DIR (new, empty, or a previous dry run) and upload nothing.",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = push_to_hub(
            args.checkpoint,
            args.repo_id,
            private=args.private,
            branch=args.branch,
            commit_message=args.commit_message,
            dry_run=args.dry_run,
            license=args.license,
        )
    except PushToHubError as error:
        print(f"push_to_hub.py: {error}", file=sys.stderr)
        return 1
    files = ", ".join(result["files"])
    if args.dry_run is not None:
        print(
            f"Wrote the {len(result['files'])} files an upload to {args.repo_id} would send to {result['folder']} "
            f"(nothing was uploaded): {files}"
        )
    else:
        print(f"Uploaded {len(result['files'])} files to {args.repo_id}: {result['commit_url']}\n{files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
