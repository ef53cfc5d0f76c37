"""Where images come from on a command line: files, folders, globs and http(s) URLs turned into a list of sources,
and one source read into an upright RGB image, with errors that name the source."""

from __future__ import annotations

import glob
import io
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import PIL.Image

# What a folder contributes: files with these extensions (any case). Anything named explicitly, or matched by a glob,
# is read whatever its extension, as if the shell had expanded the glob.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
URL_SCHEMES = ("http://", "https://")
_GLOB_CHARACTERS = ("*", "?", "[")
_CHUNK = 1 << 16


class SourceError(ValueError):
    """An input that cannot be captioned (missing file, failed download, not an image); its message names it."""


def is_url(source: str) -> bool:
    return source.lower().startswith(URL_SCHEMES)


def _folder_images(folder: Path, recursive: bool) -> list[str]:
    # Hidden files are left out: macOS "._photo.jpg" resource forks carry an image extension but no image.
    found = folder.rglob("*") if recursive else folder.iterdir()
    images = [
        path
        for path in found
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    ]
    return [str(path) for path in sorted(images)]


def expand_inputs(inputs: list[str], recursive: bool = False) -> tuple[list[str], list[SourceError]]:
    """
    The images that command-line inputs name, in order, and an error for every input that names none.

    Args:
        inputs (`list[str]`):
            Image files (read whatever their extension), folders (the image files directly inside, sorted by name;
            with `recursive`, also those in subfolders, hidden files and folders left out), globs (expanded here, so
            a quoted `"photos/*.jpg"` works as an unquoted one; `**` matches subfolders) and http(s) URLs (kept as
            they are, fetched later).
        recursive (`bool`, *optional*, defaults to `False`):
            Whether a folder contributes the images in its subfolders too.

    Returns:
        `tuple[list[str], list[SourceError]]`: the sources (paths and URLs) and one error per input that named no
        image (a missing path, a glob matching nothing, a folder without images, an unsupported URL scheme).
    """
    sources: list[str] = []
    errors: list[SourceError] = []
    for given in inputs:
        if is_url(given):
            sources.append(given)
            continue
        if "://" in given:
            errors.append(SourceError(f"{given}: unsupported URL scheme; only http:// and https:// URLs are fetched."))
            continue
        path = os.path.expanduser(given)
        if os.path.isdir(path):
            found = _folder_images(Path(path), recursive)
            if not found:
                hint = "" if recursive else " (add --recursive to look in its subfolders)"
                errors.append(
                    SourceError(f"{given}: folder holds no image files ({', '.join(IMAGE_EXTENSIONS)}){hint}.")
                )
            sources.extend(found)
        elif os.path.exists(path):
            sources.append(path)
        elif not any(character in path for character in _GLOB_CHARACTERS):
            errors.append(SourceError(f"{given}: no such file or folder."))
        else:
            matches = sorted(glob.glob(path, recursive=True))
            if not matches:
                errors.append(SourceError(f"{given}: no file matches this pattern."))
            for match in matches:
                sources.extend(_folder_images(Path(match), recursive) if os.path.isdir(match) else [match])
    return sources, errors


def fetch_url(url: str, timeout: float = 10.0, max_bytes: int = 20_000_000) -> tuple[bytes, str]:
    """
    The body of an http(s) URL and its Content-Type.

    Args:
        url (`str`): the address.
        timeout (`float`, *optional*, defaults to 10.0): seconds for the whole download, connection included.
        max_bytes (`int`, *optional*, defaults to 20 000 000): a longer body is refused, not read to the end.

    Raises:
        `SourceError` naming the URL: an HTTP error status, a network error, a timeout or a body over `max_bytes`.
    """
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": "captioner", "Accept": "image/*,*/*;q=0.5"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            content_type = response.headers.get("Content-Type", "no Content-Type")
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise SourceError(f"{url}: the body is {int(length)} bytes, more than --max_bytes={max_bytes}.")
            body = bytearray()
            while chunk := response.read1(_CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise SourceError(f"{url}: the body is more than --max_bytes={max_bytes} bytes.")
                # The socket timeout bounds each read; a server that trickles bytes is bounded here.
                if time.monotonic() > deadline:
                    raise TimeoutError
    except urllib.error.HTTPError as error:
        raise SourceError(f"{url}: HTTP {error.code} {error.reason}.") from error
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise SourceError(f"{url}: no answer within --timeout={timeout:g} seconds.") from error
        raise SourceError(f"{url}: cannot fetch it ({error.reason}).") from error
    except TimeoutError as error:
        raise SourceError(f"{url}: the download took more than --timeout={timeout:g} seconds.") from error
    except OSError as error:
        raise SourceError(f"{url}: the download failed ({error}).") from error
    return bytes(body), content_type


def read_image(source: str, timeout: float = 10.0, max_bytes: int = 20_000_000) -> PIL.Image.Image:
    """
    One source as an upright RGB PIL image (EXIF orientation applied, any mode converted as `load_image` does).

    Args:
        source (`str`): an image file path or an http(s) URL.
        timeout (`float`, *optional*, defaults to 10.0): seconds allowed for a URL's download.
        max_bytes (`int`, *optional*, defaults to 20 000 000): the largest URL body read.

    Raises:
        `SourceError` naming the source: a missing or unreadable file, a failed download, a body that is no image.
    """
    from modeling_captioner import load_image

    if not is_url(source):
        try:
            return load_image(source)
        except (OSError, ValueError) as error:
            raise SourceError(str(error)) from error
    body, content_type = fetch_url(source, timeout=timeout, max_bytes=max_bytes)
    try:
        with PIL.Image.open(io.BytesIO(body)) as opened:
            opened.load()
            return load_image(opened, where=source)
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise SourceError(f"{source}: not a readable image ({content_type}, {len(body)} bytes): {error}") from error


__all__ = ["IMAGE_EXTENSIONS", "SourceError", "expand_inputs", "fetch_url", "is_url", "read_image"]
