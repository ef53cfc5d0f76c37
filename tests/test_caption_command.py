"""`captioner caption` on a tiny saved model: the captions it prints are model.generate's, in input order, in every
output format; folders, globs and URLs (a real local http.server) expand and download; bad inputs are named on stderr
and skipped with exit status 1; usage errors exit 2 with a sentence; the console script is installed; throughput is
printed; `--compile yes` gives the eager captions without recompiling for a partial last batch, and falls back with
a note for the LSTM; reading ahead stays bounded."""

import csv
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import scene_images, tiny_model
from PIL import Image
from transformers import AutoModel, AutoProcessor

from captioning.cli.caption import _prefetched, default_num_workers, generation_kwargs, tidy_caption
from captioning.cli.main import main
from captioning.data.images import SourceError, expand_inputs, fetch_url, read_image
from modeling_captioner import CaptionerProcessor, build_image_processor, load_image

# Seed 5: the random tiny model gives different captions to different scenes (so a mix-up of order shows), with
# punctuation that tidy_caption changes.
SEED = 5
GENERATION = {"num_beams": 2, "max_new_tokens": 6, "min_new_tokens": 3}
FLAGS = ["--num_beams", "2", "--max_new_tokens", "6", "--min_new_tokens", "3"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tokenizer) -> str:
    model = tiny_model("resnet", "transformer", tokenizer, seed=SEED)
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    CaptionerProcessor(build_image_processor(model.config), tokenizer).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def loaded(model_folder):
    return AutoModel.from_pretrained(model_folder).eval(), AutoProcessor.from_pretrained(model_folder)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """photos/: six scenes (PNG, JPEG, grey and palette modes), a corrupt .jpg, a text file, a hidden image and a
    subfolder with one more image."""
    folder = tmp_path_factory.mktemp("photos")
    images, _ = scene_images(6)
    images[0].save(folder / "a.png")
    images[1].save(folder / "b.jpg", quality=95)
    images[2].convert("L").save(folder / "c.png")
    images[3].convert("P").save(folder / "d.gif")
    images[4].save(folder / "e.PNG")
    images[5].save(folder / 'f, "quoted".png')
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    images[0].save(folder / ".hidden.png")
    (folder / "sub").mkdir()
    images[1].save(folder / "sub" / "g.png")
    return folder


GOOD = ["a.png", "b.jpg", "c.png", "d.gif", "e.PNG", 'f, "quoted".png']


def expected_captions(loaded, paths, **generation) -> list[list[str]]:
    """What model.generate gives for these files in one batch: one list of captions per image."""
    model, processor = loaded
    pixel_values = processor(images=[load_image(path) for path in paths])["pixel_values"]
    captions = processor.batch_decode(model.generate(pixel_values, **generation), skip_special_tokens=True)
    per_image = len(captions) // len(paths)
    return [captions[i * per_image : (i + 1) * per_image] for i in range(len(paths))]


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main(["caption", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def test_text_lines_are_generates_captions_in_input_order(model_folder, loaded, image_folder, capsys):
    paths = [str(image_folder / name) for name in GOOD]
    expected = [captions[0] for captions in expected_captions(loaded, paths, **GENERATION)]
    assert all(expected) and len(set(expected)) >= 3, "the tiny model's captions are too alike to show order; reseed"

    # Batches of 2 with failures between them: order and grouping must survive the batching.
    status, out, err = run(capsys, "-m", model_folder, *paths, *FLAGS, "--batch_size", "2", "-q", "--raw")
    assert (status, err) == (0, "")
    assert out.splitlines() == [f"{path}\t{caption}" for path, caption in zip(paths, expected, strict=True)]

    status, out, _ = run(capsys, "-m", model_folder, *paths, *FLAGS, "-q")
    assert status == 0
    assert out.splitlines() == [f"{path}\t{tidy_caption(c)}" for path, c in zip(paths, expected, strict=True)]
    assert any(tidy_caption(caption) != caption for caption in expected), "tidying was not exercised; reseed"


def test_jsonl_and_csv_hold_num_return_sequences_captions_per_image(model_folder, loaded, image_folder, capsys):
    paths = [str(image_folder / name) for name in GOOD]
    expected = expected_captions(loaded, paths, num_return_sequences=2, **GENERATION)
    flags = [*FLAGS, "-n", "2", "--raw", "-q"]

    status, out, _ = run(capsys, "-m", model_folder, *paths, *flags, "--format", "jsonl")
    records = [json.loads(line) for line in out.splitlines()]
    assert status == 0
    assert records == [
        {"image": path, "caption": captions[0], "captions": captions}
        for path, captions in zip(paths, expected, strict=True)
    ]

    status, out, _ = run(capsys, "-m", model_folder, *paths, *flags, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0
    # The comma and quotes of 'f, "quoted".png' survive the round trip.
    assert [(row["image"], row["caption"]) for row in rows] == [
        (path, caption) for path, captions in zip(paths, expected, strict=True) for caption in captions
    ]

    status, out, _ = run(capsys, "-m", model_folder, paths[0], *flags)
    assert out.splitlines() == [f"{paths[0]}\t{caption}" for caption in expected[0]]


def test_bad_inputs_are_named_on_stderr_skipped_and_exit_1(model_folder, loaded, image_folder, capsys):
    good = [str(image_folder / "a.png"), str(image_folder / "b.jpg")]
    corrupt, text, missing = (str(image_folder / name) for name in ("corrupt.jpg", "notes.txt", "missing.png"))
    no_match = str(image_folder / "nothing-*.png")
    inputs = [good[0], corrupt, missing, no_match, text, good[1]]
    status, out, err = run(capsys, "-m", model_folder, *inputs, *FLAGS, "-q", "--raw")

    assert status == 1
    expected = [captions[0] for captions in expected_captions(loaded, good, **GENERATION)]
    assert out.splitlines() == [f"{path}\t{caption}" for path, caption in zip(good, expected, strict=True)]
    lines = err.splitlines()
    assert lines[-1] == "captioner caption: 4 input(s) failed, 2 image(s) captioned."
    skipped = lines[:-1]
    assert len(skipped) == 4 and all(line.startswith("captioner caption: skipped: ") for line in skipped)
    for name, reason in [(missing, "no such file"), (no_match, "no file matches"), (corrupt, "Cannot read image")]:
        assert any(name in line and reason in line for line in skipped), (name, err)
    assert any(text in line for line in skipped)

    status, out, err = run(capsys, "-m", model_folder, missing, no_match)
    assert (status, out) == (1, "")
    assert "nothing to caption" in err


def test_folders_and_globs_expand_as_documented(model_folder, image_folder, capsys, monkeypatch):
    monkeypatch.chdir(image_folder)
    top = sorted(["a.png", "b.jpg", "c.png", "corrupt.jpg", "d.gif", "e.PNG", 'f, "quoted".png'])
    assert expand_inputs(["."]) == (top, [])
    sources, errors = expand_inputs(["."], recursive=True)
    assert sources == sorted([*top, os.path.join("sub", "g.png")]) and errors == []
    # A quoted glob works as the shell's would, "**" reaches subfolders, a folder a glob matches is expanded.
    assert expand_inputs(["*.png"])[0] == ["a.png", "c.png", 'f, "quoted".png']
    assert expand_inputs(["**/*.png"])[0] == ["a.png", "c.png", 'f, "quoted".png', os.path.join("sub", "g.png")]
    assert expand_inputs(["su?"])[0] == [os.path.join("sub", "g.png")]
    # Named explicitly, a file is read whatever its extension (and fails later if it is no image).
    assert expand_inputs(["notes.txt", "https://example.com/x.jpg"]) == (
        ["notes.txt", "https://example.com/x.jpg"],
        [],
    )
    empty = image_folder / "empty"
    empty.mkdir(exist_ok=True)
    sources, errors = expand_inputs(["empty", "ftp://host/x.png", "nope.png", "zz*.png"])
    assert sources == []
    assert [str(error) for error in errors] == [
        "empty: folder holds no image files (.jpg, .jpeg, .jfif, .png, .gif, .bmp, .webp, .tif, .tiff, .ppm, .pgm) "
        "(add --recursive to look in its subfolders).",
        "ftp://host/x.png: unsupported URL scheme; only http:// and https:// URLs are fetched.",
        "nope.png: no such file or folder.",
        "zz*.png: no file matches this pattern.",
    ]

    status, out, err = run(capsys, "-m", model_folder, "sub", "--input_list", "list.txt", *FLAGS, "-q")
    assert status == 2 and "--input_list list.txt: cannot read it" in err
    (image_folder / "list.txt").write_text("a.png\n\nsub\n")
    status, out, err = run(capsys, "-m", model_folder, "--input_list", "list.txt", *FLAGS, "-q")
    assert (status, err) == (0, "")
    assert [line.split("\t")[0] for line in out.splitlines()] == ["a.png", os.path.join("sub", "g.png")]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        release = self.server.release
        if self.path.startswith("/images/"):
            body = (self.server.root / self.path.removeprefix("/images/")).read_bytes()
            self._answer(200, "image/png", body)
        elif self.path == "/notimage":
            self._answer(200, "text/html; charset=utf-8", b"<html><body>Sign in to see this photo</body></html>")
        elif self.path == "/slow":
            release.wait(5)  # no answer until the test ends
        elif self.path == "/trickle":
            # Answers at once and keeps sending a byte a tenth of a second: only a whole-download deadline stops it.
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            while not release.wait(0.1):
                self.wfile.write(b"x")
                self.wfile.flush()
        else:
            self._answer(404, "text/plain", b"no such image")

    def _answer(self, status: int, content_type: str, body: bytes):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the client hung up on /slow or /trickle, as the test wants


@pytest.fixture
def image_server(image_folder):
    server = _Server(("127.0.0.1", 0), _Handler)
    server.root, server.release = image_folder, threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.release.set()
    server.shutdown()
    server.server_close()


def test_urls_download_and_failures_are_named(model_folder, loaded, image_folder, image_server, capsys):
    good = [f"{image_server}/images/a.png", f"{image_server}/images/d.gif"]
    bad = {
        f"{image_server}/missing.png": "HTTP 404 Not Found",
        f"{image_server}/notimage": "not a readable image (text/html; charset=utf-8, 51 bytes)",
        f"{image_server}/slow": "--timeout=0.5",
        f"{image_server}/trickle": "took more than --timeout=0.5 seconds",
    }
    started = time.monotonic()
    status, out, err = run(capsys, "-m", model_folder, good[0], *bad, good[1], *FLAGS, "-q", "--timeout", "0.5")
    assert time.monotonic() - started < 10

    assert status == 1
    files = [str(image_folder / "a.png"), str(image_folder / "d.gif")]
    expected = [captions[0] for captions in expected_captions(loaded, files, **GENERATION)]
    assert out.splitlines() == [f"{url}\t{tidy_caption(caption)}" for url, caption in zip(good, expected, strict=True)]
    skipped = err.splitlines()[:-1]
    assert len(skipped) == len(bad)
    for url, reason in bad.items():
        assert any(f"{url}:" in line and reason in line for line in skipped), (url, err)

    with Image.open(image_folder / "a.png") as original:
        assert read_image(good[0]).tobytes() == original.convert("RGB").tobytes()
    with pytest.raises(SourceError, match=r"more than --max_bytes=100"):
        fetch_url(good[0], max_bytes=100)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device", "gpu"], "--device 'gpu' is not a device; use cpu, cuda, cuda:N, mps or auto."),
        (["-n", "3"], "--num_return_sequences 3 needs --num_beams 3 or more"),
        (["--temperature", "0.7"], "--temperature only matters when sampling; add --do_sample"),
        (["--length_penalty", "0.6"], "--length_penalty only matters in beam search"),
        (["--max_new_tokens", "40"], "(max_position_embeddings=32, the start token included); use at most 31."),
        (["--batch_size", "0"], "argument --batch_size: must be a whole number ≥ 1, got 0"),
        (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["--top_p", "1.5"], "argument --top_p: must be a number in (0, 1], got 1.5"),
        (["--compile", "maybe"], "argument --compile: invalid choice: 'maybe' (choose from "),
    ],
)
def test_usage_errors_exit_2_with_a_sentence(model_folder, image_folder, capsys, flags, message):
    status, out, err = run(capsys, "-m", model_folder, image_folder / "a.png", "-q", *flags)
    assert (status, out) == (2, "")
    assert message in err


def test_missing_model_no_inputs_and_absent_gpu_exit_2(image_folder, tmp_path, capsys):
    image = image_folder / "a.png"
    status, _, err = run(capsys, "-m", tmp_path / "no-model", image)
    assert status == 2
    assert (
        err == f"captioner caption: error: --model {tmp_path / 'no-model'}: no such folder; give a saved model "
        "folder or a hub id (user/name).\n"
    )
    status, _, err = run(capsys, "-m", tmp_path, image)
    assert status == 2 and f"--model {tmp_path}: cannot load a model and processor from it" in err
    status, _, err = run(capsys, "-m", tmp_path)
    assert status == 2 and "no images given" in err
    assert main([]) == 2 and "the following arguments are required: COMMAND" in capsys.readouterr().err
    if not torch.cuda.is_available():
        status, _, err = run(capsys, "-m", tmp_path, image, "--device", "cuda")
        assert status == 2 and "--device cuda: PyTorch" in err and "sees no CUDA GPU on this machine" in err


def test_progress_bar_goes_to_stderr_and_output_file(model_folder, image_folder, tmp_path, capsys):
    paths = [str(image_folder / name) for name in GOOD]
    status, out, err = run(capsys, "-m", model_folder, *paths, *FLAGS, "--batch_size", "2")
    assert status == 0
    assert [line.split("\t")[0] for line in out.splitlines()] == paths  # nothing but captions on stdout
    assert "captioning: 100%" in err and "6/6" in err

    output = tmp_path / "captions.jsonl"
    status, out, err = run(capsys, "-m", model_folder, *paths, *FLAGS, "--batch_size", "2", "-q", "-o", output)
    assert (status, out, err) == (0, "", "")
    assert [json.loads(line)["image"] for line in output.read_text().splitlines()] == paths


THROUGHPUT = re.compile(
    r"captioner caption: (\d+) image\(s\) captioned in ([\d.]+) s \(([\d.]+) images/s; (.*)\), (\d+) skipped\."
)


def throughput(err: str) -> tuple[int, float, float, str, int]:
    """The throughput line's numbers: images, seconds, images/s, what was excluded, skipped."""
    (match,) = [match for match in map(THROUGHPUT.fullmatch, err.splitlines()) if match]
    images, seconds, rate, excluded, skipped = match.groups()
    return int(images), float(seconds), float(rate), excluded, int(skipped)


def test_throughput_is_printed_at_the_end(model_folder, image_folder, capsys):
    paths = [str(image_folder / name) for name in GOOD]
    started = time.perf_counter()
    status, out, err = run(
        capsys, "-m", model_folder, *paths, "missing.png", *FLAGS, "--batch_size", "4", "--device", "cpu"
    )
    wall = time.perf_counter() - started
    assert status == 1 and len(out.splitlines()) == 6
    images, seconds, rate, excluded, skipped = throughput(err)
    assert (images, skipped) == (6, 1)
    assert 0 < seconds < wall
    # Both numbers are printed to 2 decimals.
    assert images / (seconds + 0.005) - 0.005 <= rate <= images / max(seconds - 0.005, 1e-9) + 0.005
    # On a CPU, --compile auto decodes eagerly.
    assert excluded == "eager decoding, no warm-up"
    assert err.splitlines()[-1] == "captioner caption: 1 input(s) failed, 6 image(s) captioned."


# Greedy (generate() compiles the step of greedy search and sampling, not beam search's); seed 5 with no repeated
# word gives the six scenes five different captions.
GREEDY = ["--max_new_tokens", "6", "--min_new_tokens", "3", "--no_repeat_ngram_size", "1", "--device", "cpu"]


def test_compiled_decoding_gives_the_eager_captions_with_a_partial_last_batch(
    model_folder, loaded, image_folder, capsys
):
    paths = [str(image_folder / name) for name in GOOD[:5]]  # batches of 2, 2 and 1
    expected = [
        c[0] for c in expected_captions(loaded, paths, max_new_tokens=6, min_new_tokens=3, no_repeat_ngram_size=1)
    ]
    assert len(set(expected)) >= 3, "the tiny model's greedy captions are too alike to show order; reseed"
    status, eager, err = run(
        capsys, "-m", model_folder, *paths, *GREEDY, "--batch_size", "2", "--compile", "no", "--raw"
    )
    assert status == 0, err
    assert eager.splitlines() == [f"{path}\t{caption}" for path, caption in zip(paths, expected, strict=True)]

    # The warm-up compiles the step for batches of 2; the last batch is padded to 2, so nothing compiles again.
    torch._dynamo.reset()
    # torch's own patch, not monkeypatch: pytest ≥ 9.2 undoes a module attribute missing from its __dict__ with
    # delattr, which hides a torch config entry for the rest of the session.
    with torch._dynamo.config.patch(error_on_recompile=True):
        status, compiled, err = run(
            capsys, "-m", model_folder, *paths, *GREEDY, "--batch_size", "2", "--compile", "yes", "--raw"
        )
    assert status == 0, err
    assert compiled == eager
    assert "fast decoding warmed up in" in err and "(batches of 2 images)" in err
    images, _, _, excluded, skipped = throughput(err)
    assert (images, skipped) == (5, 0) and re.fullmatch(r"the [\d.]+ s warm-up excluded", excluded)


def test_compile_yes_with_the_lstm_decoder_falls_back_with_a_note(tokenizer, image_folder, tmp_path, capsys):
    model = tiny_model("resnet", "lstm", tokenizer, seed=SEED)
    model.save_pretrained(tmp_path)
    CaptionerProcessor(build_image_processor(model.config), tokenizer).save_pretrained(tmp_path)
    capsys.readouterr()  # save_pretrained's progress bar
    paths = [str(image_folder / name) for name in GOOD[:3]]
    status, eager, err = run(capsys, "-m", tmp_path, *paths, *GREEDY, "--batch_size", "2", "--compile", "no", "-q")
    assert (status, err) == (0, "")
    status, out, err = run(capsys, "-m", tmp_path, *paths, *GREEDY, "--batch_size", "2", "--compile", "yes", "-q")
    assert status == 0 and out == eager
    assert err == (
        "captioner caption: note: --compile yes: the lstm decoder has no static-cache decoding step to compile; "
        "captioning with its eager path.\n"
    )


def test_reading_ahead_is_bounded_and_waits_without_spinning():
    # A folder of 100k files: the paths are listed, but only `window` images are read ahead of the consumer.
    sources = [f"{index}.jpg" for index in range(100_000)]
    started, lock = 0, threading.Lock()

    def prepare(source: str) -> str:
        nonlocal started
        with lock:
            started += 1
        return source

    consumed = 0
    for source, future in _prefetched(sources, prepare, workers=8, window=32):
        assert started <= consumed + 1 + 32
        assert future.result() == source
        consumed += 1
    assert consumed == started == len(sources)

    # Readers slower than the consumer: it blocks on them rather than spinning.
    def slow(source: str) -> str:
        time.sleep(0.02)
        return source

    cpu, wall = time.thread_time(), time.perf_counter()
    assert [future.result() for _, future in _prefetched(sources[:40], slow, workers=1, window=4)] == sources[:40]
    assert time.thread_time() - cpu < 0.2 * (time.perf_counter() - wall)


def test_default_num_workers_scale_with_the_machine_on_a_gpu(monkeypatch):
    assert default_num_workers(torch.device("cpu")) == 4
    for cores, workers in [(2, 4), (6, 6), (64, 8)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cores=cores: set(range(cores)), raising=False)
        assert default_num_workers(torch.device("cuda")) == workers


def test_only_given_generation_options_reach_generate(loaded):
    model, _ = loaded
    unset = dict.fromkeys(["num_beams", "num_return_sequences", "max_new_tokens", "do_sample", "top_p"])
    assert generation_kwargs({**unset, "batch_size": 4}, model) == {}
    # The model's generation_config has max_length; max_new_tokens replaces it instead of drawing a warning.
    assert generation_kwargs({**unset, "max_new_tokens": 5, "do_sample": True, "top_p": 0.9}, model) == {
        "max_new_tokens": 5,
        "do_sample": True,
        "top_p": 0.9,
        "max_length": None,
    }


@pytest.mark.parametrize(
    "decoded, tidy",
    [
        ("a black dog is running through the grass .", "a black dog is running through the grass."),
        ("a cafe - goer ' s dog , ( big ) don ' t !", "a cafe-goer's dog, (big) don't!"),
        ('a sign says " stop " on a black / white pole', 'a sign says "stop" on a black/white pole'),
        ("3 . 5 metres and 3 , 000 people : 2 , 3 dogs", "3.5 metres and 3,000 people: 2, 3 dogs"),
        ("  two   dogs  ", "two dogs"),
        ("", ""),
    ],
)
def test_tidy_caption_joins_wordpiece_punctuation(decoded, tidy):
    assert tidy_caption(decoded) == tidy


def test_console_script_and_module_entry_point(model_folder, image_folder, tmp_path):
    script = shutil.which("captioner")
    assert script, "the `captioner` console script is missing: run `pip install -e .`"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    image = str(image_folder / "a.png")
    completed = subprocess.run(
        [script, "caption", "-m", model_folder, image, *FLAGS, "--format", "jsonl", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(completed.stdout)["image"] == image
    helped = subprocess.run(
        [sys.executable, "-m", "captioning.cli", "caption", "--help"], capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0 and "--num_return_sequences" in helped.stdout
