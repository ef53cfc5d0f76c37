"""Reads caption text out of the common caption-dataset file layouts (plain text, CSV/TSV, Flickr8k, Karpathy, COCO)."""

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

SUPPORTED_EXTENSIONS = (".txt", ".csv", ".tsv", ".json", ".jsonl")

# Column / field names accepted as "the caption", checked in this order.
CAPTION_FIELDS = ("caption", "captions", "text")

# Flickr8k.token.txt / Flickr30k results_*.token: "1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress ..."
_FLICKR_TOKEN_LINE = re.compile(r"^[^\t#]+#\d+\t")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def read_captions(path: str | os.PathLike) -> list[str]:
    """
    Reads the captions of a caption file.

    The layout is chosen from the extension and, for text files, from the first non-empty line:

    - `.txt`: one caption per line. Two Flickr8k layouts are recognised too: the Kaggle `captions.txt`
      (`image,caption` header, then CSV rows) and `Flickr8k.token.txt` (`img.jpg#0<TAB>caption`).
    - `.csv` / `.tsv`: a header row with a column named `caption`, `captions` or `text` (case-insensitive). A
      headerless `.tsv` in the `Flickr8k.token.txt` layout is recognised as well.
    - `.json`: a list of strings (or of objects with a `caption`/`captions`/`text` field); a Karpathy split file
      (`{"images": [{"sentences": [{"raw": ...}]}]}`, all splits are read); or a COCO annotation file
      (`{"annotations": [{"caption": ...}]}`).
    - `.jsonl`: one JSON object per line with a `caption`/`captions`/`text` field (or one JSON string per line).

    Files are decoded as UTF-8 (a byte-order mark is ignored). Surrounding whitespace is stripped and empty
    captions are dropped.

    Args:
        path (`str` or `os.PathLike`):
            The caption file.

    Returns:
        `list[str]`: The captions, in file order.

    Raises:
        `FileNotFoundError`: If `path` does not exist.
        `ValueError`: If the extension is not supported, the content does not match the expected layout, or the
            file holds no captions. The message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"caption file not found: '{path}'")
    if path.is_dir():
        raise ValueError(f"'{path}' is a directory; expected a caption file ({', '.join(SUPPORTED_EXTENSIONS)})")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"unsupported caption file extension '{path.suffix}' for '{path}'; "
            f"expected one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"'{path}' is not UTF-8 text ({error.reason} at byte {error.start})") from None

    if suffix == ".txt":
        raw = _read_txt(text, path)
    elif suffix in (".csv", ".tsv"):
        raw = _read_delimited(text, path, delimiter="," if suffix == ".csv" else "\t")
    elif suffix == ".json":
        raw = _read_json(text, path)
    else:
        raw = _read_jsonl(text, path)

    captions = [caption.strip() for caption in raw if caption and caption.strip()]
    if not captions:
        raise ValueError(f"no captions found in '{path}'; {_describe_expected(suffix)}")
    return captions


def _describe_expected(suffix: str) -> str:
    return {
        ".txt": "expected one caption per line (or a Flickr8k captions.txt / Flickr8k.token.txt layout)",
        ".csv": "expected a header with a 'caption', 'captions' or 'text' column and at least one non-empty row",
        ".tsv": "expected a header with a 'caption', 'captions' or 'text' column and at least one non-empty row",
        ".json": "expected a list of strings, a Karpathy dataset_*.json or a COCO captions_*.json",
        ".jsonl": "expected one JSON object per line with a 'caption' or 'text' field",
    }[suffix]


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def _is_flickr_token_layout(text: str) -> bool:
    return bool(_FLICKR_TOKEN_LINE.match(_first_line(text)))


def _read_flickr_token(text: str, path: Path) -> list[str]:
    captions = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if not _FLICKR_TOKEN_LINE.match(line):
            # A half-matching file is more likely a wrong guess than data worth silently skipping.
            raise ValueError(f"'{path}' line {number}: expected 'image.jpg#N<TAB>caption' like the lines before it")
        captions.append(line.split("\t", 1)[1])
    return captions


def _looks_like_csv_header(line: str) -> bool:
    # Kaggle's Flickr8k captions.txt starts with "image,caption"; a caption that merely contains commas has
    # fields with spaces in them, which no header column name does.
    fields = [field.strip().lower() for field in line.split(",")]
    return (
        len(fields) > 1
        and any(field in CAPTION_FIELDS for field in fields)
        and all(_IDENTIFIER.fullmatch(field) for field in fields)
    )


def _read_txt(text: str, path: Path) -> list[str]:
    if _is_flickr_token_layout(text):
        return _read_flickr_token(text, path)
    if _looks_like_csv_header(_first_line(text)):
        return _read_delimited(text, path, delimiter=",")
    return text.splitlines()


def _read_delimited(text: str, path: Path, delimiter: str) -> list[str]:
    if delimiter == "\t" and _is_flickr_token_layout(text):
        return _read_flickr_token(text, path)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    if header is None:
        return []
    names = [name.strip().lower() for name in header]
    column = next((names.index(field) for field in CAPTION_FIELDS if field in names), None)
    if column is None:
        raise ValueError(
            f"'{path}' has no caption column: expected a header naming one of {', '.join(CAPTION_FIELDS)}, "
            f"found {header}"
        )
    last = column == len(header) - 1
    captions = []
    for row in reader:
        if column >= len(row):
            continue
        # Unquoted commas inside a trailing caption column (seen in hand-made Flickr8k CSVs) split the caption
        # into extra fields; glue them back instead of losing the tail of the sentence.
        captions.append(delimiter.join(row[column:]) if last else row[column])
    return captions


def _caption_from_record(record: Any, where: str) -> list[str]:
    if isinstance(record, str):
        return [record]
    if isinstance(record, dict):
        for field in CAPTION_FIELDS:
            if field in record:
                value = record[field]
                if isinstance(value, str):
                    return [value]
                if isinstance(value, list) and all(isinstance(item, str) for item in value):
                    return value
                raise ValueError(f"{where}: field '{field}' should be a string or a list of strings")
        raise ValueError(f"{where}: expected a field named one of {', '.join(CAPTION_FIELDS)}, found {list(record)}")
    raise ValueError(f"{where}: expected a string or an object with a caption field, found {type(record).__name__}")


def _read_json(text: str, path: Path) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"'{path}' is not valid JSON ({error.msg} at line {error.lineno})") from None
    if isinstance(data, list):
        captions = []
        for index, record in enumerate(data):
            captions.extend(_caption_from_record(record, f"'{path}' item {index}"))
        return captions
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        # Karpathy split files carry every split; the caller decides whether the test captions belong in the vocab.
        return [
            sentence["raw"]
            for image in data["images"]
            for sentence in image.get("sentences", [])
            if isinstance(sentence, dict) and isinstance(sentence.get("raw"), str)
        ]
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return [
            annotation["caption"]
            for annotation in data["annotations"]
            if isinstance(annotation, dict) and isinstance(annotation.get("caption"), str)
        ]
    found = f"an object with keys {sorted(data)[:10]}" if isinstance(data, dict) else type(data).__name__
    raise ValueError(
        f"'{path}' has an unrecognised JSON layout ({found}); "
        "expected a list of strings, a Karpathy dataset_*.json ('images' -> 'sentences' -> 'raw') "
        "or a COCO captions_*.json ('annotations' -> 'caption')"
    )


def _read_jsonl(text: str, path: Path) -> list[str]:
    captions = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"'{path}' line {number} is not valid JSON ({error.msg})") from None
        captions.extend(_caption_from_record(record, f"'{path}' line {number}"))
    return captions
