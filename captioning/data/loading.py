"""Loading a dataset's train/validation/test splits by format name, and the dataset flags train.py and the
evaluation command share."""

import os
from collections.abc import Sequence

from captioning.data.formats import coco, flickr8k, hf, karpathy, synthetic
from captioning.data.records import CaptionDataset
from captioning.data.splits import DataSource, reject_options
from captioning.data.web.splits import (
    STREAM_FORMATS,
    add_web_data_arguments,
    check_web_data_arguments,
    load_web_splits,
)

# Format name → its module (OPTIONS, load). A new format is one module in formats/ and one line here.
FORMATS = {"synthetic": synthetic, "flickr8k": flickr8k, "karpathy": karpathy, "coco": coco, "hf": hf}


def load_caption_splits(
    dataset_format: str,
    data_dir: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    image_column: str = "image",
    caption_column: str | Sequence[str] = "caption",
    seed: int = 0,
    verify_images: bool | str = True,
    **format_options,
) -> dict[str, CaptionDataset]:
    """
    Loads a caption dataset as train, validation and test `CaptionDataset`s (one item per image, all its captions).

    Bad data is skipped and counted by reason in each split's `skipped` (`SkipCounts`, logged as one line per
    split): annotated images whose file is missing, files PIL cannot open or verify, empty captions and images left
    without captions.

    Args:
        dataset_format (`str`):
            - `"synthetic"`: the built-in rendered scenes, drawn in memory. Options: `variant` (`"easy"`: shape
              scenes, `captioning.data.synthetic`; `"hard"`: scenes of drawn objects, `captioning.data.synthetic_hard`);
              `sizes` (`{"train": 3000, "validation": 250, "test": 250}` or a 3-tuple) or any of `train_size`,
              `validation_size`, `test_size`; `image_size` (64 easy, 160 hard).
            - `"flickr8k"`: `data_dir` in the Kaggle layout (`captions.txt` + `Images/`) or the original one
              (`Flickr8k.token.txt` + `Flicker8k_Dataset/`, maybe under `Flickr8k_text/`). The official split lists
              `Flickr_8k.{train,dev,test}Images.txt` are used when present, else the images are split by seed.
              Options: `images_dir`, `split_fractions` (default 0.75/0.125/0.125).
            - `"karpathy"`: `data_dir` holding `dataset_{flickr8k,flickr30k,coco}.json` (pick one with
              `dataset_name` if there are several) and the images; `restval` counts as train. Options:
              `annotation_file`, `images_dir` (default: the folder of `data_dir` that holds the listed files).
            - `"coco"`: `data_dir` with `annotations/captions_{train,val}2014.json` and `train2014/`, `val2014/`
              (or 2017). Without a test annotation file the val set is halved by seed into validation and test.
              Options: `year`, `images_dir` (the folder holding `train2014/` and `val2014/`).
            - `"hf"`: a 🤗 `datasets` dataset: `data_dir` (or `dataset_name`) a local folder (`save_to_disk` output,
              or a folder `load_dataset` reads such as an imagefolder with `metadata.jsonl`/`metadata.csv`), or
              `dataset_name` a Hub id. Splits named train, validation/val/valid/dev and test are used; missing
              validation/test splits are carved out of train by seed. Options: `split_fractions`, `config_name`,
              `revision`, `cache_dir`.
        data_dir (`str` or `os.PathLike`, *optional*): the dataset's folder (not used by `synthetic`).
        dataset_name (`str`, *optional*): a Hub id (`hf`) or which Karpathy file (`karpathy`: "flickr8k", ...).
        image_column (`str`, *optional*, defaults to `"image"`): `hf` only: the image column (an `Image` feature or
            file paths).
        caption_column (`str` or `list[str]`, *optional*, defaults to `"caption"`): `hf` only: the caption column
            (a string or a list of strings per row), or several columns whose captions are pooled.
        seed (`int`, *optional*, defaults to 0): seeds the synthetic scenes and every split made here.
        verify_images (`bool` or `"decode"`, *optional*, defaults to `True`): check every image file once when the
            split is built with PIL's cheap `verify()`; `"decode"` decodes every image (slower; also catches
            truncated JPEGs); `False` checks only that files exist. A file that still fails to decode later gives a
            `None` item (see `CaptionDataset`).
        format_options: the format's options listed above.

    Returns:
        `dict[str, CaptionDataset]`: keys "train", "validation" and "test".

    Raises:
        `FileNotFoundError`: `data_dir`, an annotation file or the image folder does not exist (the message names
            the path and what the format expects).
        `ValueError`: a split has no usable image (the message names format, folder, split and skip counts), or a
            file is not in the expected layout.
        `ConnectionError`: a Hub dataset cannot be loaded because `HF_HUB_OFFLINE` is set and it is not cached.
        `TypeError`: an option the format does not take.
    """
    if dataset_format not in FORMATS:
        raise ValueError(f"Unknown dataset_format {dataset_format!r}; expected one of {', '.join(FORMATS)}.")
    found = FORMATS[dataset_format]
    reject_options(dataset_format, {k: v for k, v in format_options.items() if k not in found.OPTIONS}, found.OPTIONS)
    source = DataSource(data_dir, dataset_name, image_column, caption_column, seed, verify_images)
    return found.load(source, **format_options)


def add_data_arguments(parser) -> None:
    """The dataset flags train.py and the evaluation command share (an argparse parser or group), those of the
    streamed web formats included (`captioning.data.web.splits`)."""
    parser.add_argument("--dataset_format", default="synthetic", choices=(*FORMATS, *STREAM_FORMATS))
    parser.add_argument("--data_dir", default=None, help="Folder of the dataset (layout depends on --dataset_format).")
    parser.add_argument("--dataset_name", default=None, help="A 🤗 datasets hub id or local folder (format hf).")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--caption_column", default="caption")
    parser.add_argument("--synthetic_sizes", default=None, help="Synthetic split sizes TRAIN,VALIDATION,TEST.")
    parser.add_argument(
        "--synthetic_variant",
        default="easy",
        choices=tuple(synthetic.SYNTHETIC_VARIANTS),
        help="easy: 1–3 shapes of one kind (the tests and demo); hard: 2–5 objects of ten kinds with counts, "
        "relations, backgrounds, noise/blur/JPEG and five annotator styles.",
    )
    add_web_data_arguments(parser)


def check_data_arguments(args) -> None:
    """Reject flag combinations that cannot load, before anything is built; raises SystemExit with a sentence."""
    check_web_data_arguments(args)
    if args.dataset_format in ("flickr8k", "karpathy", "coco") and not args.data_dir:
        raise SystemExit(f"--dataset_format {args.dataset_format} needs --data_dir.")
    if args.dataset_format == "hf" and not (args.dataset_name or args.data_dir):
        raise SystemExit("--dataset_format hf needs --dataset_name (a hub id or local folder) or --data_dir.")
    if args.synthetic_variant != "easy" and args.dataset_format != "synthetic":
        raise SystemExit(
            f"--synthetic_variant {args.synthetic_variant} chooses the built-in synthetic set; it does nothing with "
            f"--dataset_format {args.dataset_format}. Drop it, or use --dataset_format synthetic."
        )
    if args.synthetic_sizes is not None:
        sizes = args.synthetic_sizes.split(",")
        if len(sizes) != 3 or not all(n.strip().isdigit() and int(n) > 0 for n in sizes):
            raise SystemExit(
                f"--synthetic_sizes must be three positive integers TRAIN,VALIDATION,TEST; got {args.synthetic_sizes!r}."
            )


def load_splits_from_args(args, **stream_options) -> dict[str, CaptionDataset]:
    """`load_caption_splits` with the flags of `add_data_arguments` (and `args.seed`). For the streamed formats
    (urls, webdataset), `captioning.data.web.splits.load_web_splits(args, **stream_options)`: "train" is then a
    `CaptionStream`."""
    if args.dataset_format in STREAM_FORMATS:
        return load_web_splits(args, **stream_options)
    options = {}
    if args.dataset_format == "synthetic":
        options["variant"] = args.synthetic_variant
        if args.synthetic_sizes:
            options["sizes"] = tuple(int(n) for n in args.synthetic_sizes.split(","))
    return load_caption_splits(
        args.dataset_format,
        data_dir=args.data_dir,
        dataset_name=args.dataset_name,
        image_column=args.image_column,
        caption_column=args.caption_column,
        seed=args.seed,
        **options,
    )
