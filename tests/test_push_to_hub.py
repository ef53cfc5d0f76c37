"""push_to_hub.py offline, on tiny models: the dry-run folder (exactly the Hub files, the model card, refusals), that
folder loading with trust_remote_code=True in a clean virtual environment, and real uploads through huggingface_hub
to a loopback Hub server (files byte for byte, branch, privacy, token) with their failures (401, 403, closed port, no
token), after which the checkpoint folder is unchanged and the token was never printed."""

import base64
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from conftest import TINY, reset_accelerator_state, tiny_model
from huggingface_hub import ModelCard
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import push_to_hub
import train
from captioning.hub.model_card import build_model_card
from modeling_captioner import CaptionerProcessor, build_image_processor

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "tiny-org/tiny-captioner"
# Recognisable, so that any appearance in an output or a log is caught.
FAKE_TOKEN = "hf_FAKEtokenPushToHub0123456789abcdef"
TINY_RUN = ["--dataset_format", "synthetic", "--synthetic_sizes", "48,16,16", "--num_train_epochs", "1", *TINY]
RUN_FILES = {
    "README.md",
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "configuration_captioner.py",
    "modeling_captioner.py",
    "processing_captioner.py",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "metrics.json",
    "training_args.json",
    "samples.png",
    "training_curves.png",
}


def tree_hash(folder: Path) -> str:
    """Names, sizes and contents of every file and folder under `folder`: equal hashes mean nothing changed."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A real train.py output folder (tiny preset, synthetic data), with training_args.json."""
    folder = tmp_path_factory.mktemp("run")
    reset_accelerator_state()
    try:
        train.main([*TINY_RUN, "--output_dir", str(folder)])
    finally:
        reset_accelerator_state()
    assert (folder / "training_args.json").is_file(), "train.py writes its resolved arguments beside the model"
    # TensorBoard logs where a tracked run leaves them (OUTPUT_DIR/captioner): never uploaded.
    (folder / "captioner").mkdir()
    (folder / "captioner" / "events.out.tfevents.0").write_bytes(b"\0" * 16)
    assert list((folder / "checkpoints").glob("step_*")) and (folder / "predictions.json").is_file()
    return folder


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, tokenizer) -> Path:
    """A folder written by plain save_pretrained calls: no metrics, no training arguments, no pictures."""
    folder = tmp_path_factory.mktemp("saved")
    model = tiny_model("vit", "gpt2", tokenizer)
    model.save_pretrained(folder)
    CaptionerProcessor(build_image_processor(model.config), tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dry_run(run_folder, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dry") / "staged"
    assert push_to_hub.main([str(run_folder), REPO_ID, "--dry_run", str(folder)]) == 0
    return folder


@pytest.fixture(autouse=True)
def no_token(monkeypatch, tmp_path):
    """No token from the environment or a login on this machine, unless a test sets one."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))


def test_dry_run_writes_exactly_the_hub_files_and_leaves_the_checkpoint_alone(run_folder, tmp_path, capsys):
    before = tree_hash(run_folder)
    folder = tmp_path / "staged"
    assert push_to_hub.main([str(run_folder), REPO_ID, "--dry_run", str(folder)]) == 0
    assert "nothing was uploaded" in capsys.readouterr().out
    assert {p.name for p in folder.iterdir()} == RUN_FILES
    for name in RUN_FILES - {"README.md"}:
        assert (folder / name).read_bytes() == (run_folder / name).read_bytes(), name
    # Running again replaces the previous dry run; anything else in the folder would be refused.
    (folder / "model.safetensors").write_bytes(b"stale")
    assert push_to_hub.main([str(run_folder), REPO_ID, "--dry_run", str(folder)]) == 0
    assert (folder / "model.safetensors").read_bytes() == (run_folder / "model.safetensors").read_bytes()
    assert tree_hash(run_folder) == before


def test_model_card_has_valid_metadata_results_usage_and_training(dry_run, run_folder):
    card = ModelCard.load(dry_run / "README.md")
    data = card.data
    assert (data.license, data.library_name, data.pipeline_tag) == ("apache-2.0", "transformers", "image-text-to-text")
    assert {"image-captioning", "captioner", "resnet", "transformer"} <= set(data.tags)
    assert data.datasets is None and data.base_model is None  # synthetic data, random initialisation
    metrics = json.loads((run_folder / "metrics.json").read_text())
    expected = {k: round(v, 4) for k, v in metrics["test"].items() if k != "num_images" and v is not None}
    results = {r.metric_name.split(" ")[0]: r for r in data.eval_results}
    assert set(results) == set(expected) and "METEOR" not in results  # no Java here: absent, not 0
    for key, result in results.items():
        assert result.metric_value == expected[key]
        assert (result.dataset_type, result.dataset_split, result.task_type) == (
            "synthetic-scenes",
            "test",
            "image-text-to-text",
        )
        assert result.metric_args["num_beams"] == metrics["generation"]["num_beams"] == 2
        assert result.metric_args["max_new_tokens"] == metrics["generation"]["max_new_tokens"]
    assert data.model_name == "tiny-captioner"
    text = card.text
    for heading in ("## Usage", "## Results", "## Intended use and limitations", "## Training"):
        assert heading in text
    assert "](samples.png)" in text and "](training_curves.png)" in text
    training_args = json.loads((run_folder / "training_args.json").read_text())
    assert f"| `learning_rate` | `{training_args['learning_rate']}` |" in text and "| `preset` | `tiny` |" in text
    assert f'model_id = "{REPO_ID}"' in text and "trust_remote_code=True" in text
    # The test captions' degeneration diagnostics beside the references', from metrics.json's "test_diagnostics".
    diagnostics = metrics["test_diagnostics"]
    assert "| diagnostic | this model | references |" in text
    share, reference_share = 100 * diagnostics["repeated_2gram"], 100 * diagnostics["references/repeated_2gram"]
    assert f"(`repeated_2gram`) | {share:.1f}% | {reference_share:.1f}% |" in text
    assert f"(`truncated`) | {100 * diagnostics['truncated']:.1f}% | n/a |" in text
    assert f"(`vocabulary`) | {diagnostics['vocabulary']} | {diagnostics['references/vocabulary']} |" in text
    assert (
        f"(`mean_length`) | {diagnostics['mean_length']:.2f} | {diagnostics['references/mean_length']:.2f} |" in text
    )


def test_card_names_pretrained_base_models_and_a_hub_dataset(saved_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(vision_model_name_or_path="microsoft/resnet-101", decoder_model_name_or_path="gpt2")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "training_args.json").write_text(json.dumps({"dataset_format": "hf", "dataset_name": "someone/caps"}))
    metrics = {
        "dataset_format": "hf",
        "split": "test",
        "num_images": 10,
        "generation": {"num_beams": 5, "length_penalty": 0.6, "max_new_tokens": 30},
        "test": {"BLEU-4": 0.25, "METEOR": None, "CIDEr-D": 0.8, "num_images": 10},
        "human_agreement": None,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    card = build_model_card(folder, "me/vit-gpt2-captions")
    assert card.data.base_model == ["microsoft/resnet-101", "gpt2"] and card.data.datasets == ["someone/caps"]
    assert {(r.metric_type, r.metric_value, r.dataset_type) for r in card.data.eval_results} == {
        ("bleu", 0.25, "someone/caps"),
        ("cider", 0.8, "someone/caps"),
    }
    assert "num_beams=5, length_penalty=0.6, max_new_tokens=30)" in card.text
    assert "| diagnostic |" not in card.text  # a metrics.json from before the diagnostics has none to show
    # A dataset read from a local folder is no Hub dataset.
    (folder / "training_args.json").write_text(json.dumps({"dataset_format": "hf", "dataset_name": "/data/caps"}))
    assert build_model_card(folder, "me/x").data.datasets is None


def test_plain_save_pretrained_folder_is_pushed_as_not_evaluated(saved_folder, tmp_path):
    folder = tmp_path / "staged"
    assert push_to_hub.main([str(saved_folder), REPO_ID, "--dry_run", str(folder)]) == 0
    assert {p.name for p in folder.iterdir()} == RUN_FILES - {
        "metrics.json",
        "training_args.json",
        "samples.png",
        "training_curves.png",
    }
    readme = (folder / "README.md").read_text()
    assert "model-index" not in readme and "This model was not evaluated" in readme
    assert "no training_args.json" in readme and "gpt2" in ModelCard(readme).data.tags


def _write(path: Path, text: str) -> None:
    path.write_text(text)


BAD_FOLDERS = {
    # name: (how to spoil a copy of the saved folder, the words the error must contain)
    "missing": (lambda f: shutil.rmtree(f), "does not exist"),
    "file": (lambda f: (shutil.rmtree(f), _write(f, "x")), "is a file"),
    "empty": (lambda f: (shutil.rmtree(f), f.mkdir()), "has no config.json; expected a captioner model folder"),
    "bert": (lambda f: _write(f / "config.json", '{"model_type": "bert"}'), "has model_type 'bert'"),
    "no_weights": (lambda f: (f / "model.safetensors").unlink(), "has no model.safetensors"),
    "bin_weights": (lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"), "pytorch_model.bin"),
    "no_processor": (lambda f: (f / "processor_config.json").unlink(), "has no processor_config.json"),
    "no_code": (lambda f: (f / "modeling_captioner.py").unlink(), "has no modeling_captioner.py"),
    "bad_json": (lambda f: _write(f / "config.json", "{"), "config.json cannot be read as JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_folders_that_are_not_captioner_models_are_refused_with_a_sentence(case, saved_folder, tmp_path, capsys):
    spoil, words = BAD_FOLDERS[case]
    folder = tmp_path / "model"
    shutil.copytree(saved_folder, folder)
    spoil(folder)
    assert push_to_hub.main([str(folder), REPO_ID, "--dry_run", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert words in error and str(folder) in error
    assert not (tmp_path / "out").exists()


def test_accelerate_checkpoint_and_bad_repo_ids_are_refused(run_folder, tmp_path, capsys):
    step = sorted((run_folder / "checkpoints").glob("step_*"))[-1]
    assert push_to_hub.main([str(step), REPO_ID, "--dry_run", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "is a training-state checkpoint" in error and f"output folder ({run_folder})" in error
    for repo_id in ("no-namespace", "a/b/c", "bad name/x"):
        assert push_to_hub.main([str(run_folder), repo_id, "--dry_run", str(tmp_path / "out")]) == 1
        assert repo_id in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dry_run_folder_must_be_new_empty_or_ours_and_outside_the_checkpoint(run_folder, tmp_path, capsys):
    before = tree_hash(run_folder)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    assert push_to_hub.main([str(run_folder), REPO_ID, "--dry_run", str(foreign)]) == 1
    assert "is not empty and is not a previous dry run" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["todo.txt"]
    assert push_to_hub.main([str(run_folder), REPO_ID, "--dry_run", str(run_folder / "hub")]) == 1
    assert "inside CHECKPOINT" in capsys.readouterr().err
    assert tree_hash(run_folder) == before


def test_upload_is_refused_offline_without_touching_anything(run_folder, monkeypatch, capsys):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert push_to_hub.main([str(run_folder), REPO_ID]) == 1
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err


# --- a clean virtual environment: only torch, transformers and what they require ---------------------------------


def requirement_closure(*roots: str) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions `roots` need, following their requirements (extras left out, markers evaluated)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = list(roots)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in found:
            continue
        found[name] = importlib.metadata.distribution(name)
        for line in found[name].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return found


def link_distributions(distributions, site_packages: Path) -> None:
    """Make exactly these distributions importable from `site_packages`: a link to each top-level file or folder
    their RECORDs list (packages, modules, .dist-info for importlib.metadata), no .pth hooks."""
    for distribution in distributions:
        assert distribution.files is not None, f"{distribution.metadata['Name']} lists no files"
        for top in sorted({f.parts[0] for f in distribution.files} - {"..", "__pycache__"}):
            source = Path(distribution.locate_file(top))
            if not top.endswith(".pth") and source.exists() and not (site_packages / top).exists():
                (site_packages / top).symlink_to(source)


CLEAN_MODEL_CHECK = textwrap.dedent(
    """
    import importlib.util, json, sys
    present = [m for m in ("captioning", "modeling_captioner", "tokenization", "datasets", "accelerate", "PIL")
               if importlib.util.find_spec(m) is not None]
    assert not present, f"importable in the clean environment: {present}"
    import torch
    from transformers import AutoModel
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    size = model.config.image_size
    with torch.no_grad():
        ids = model.generate(pixel_values=torch.rand(2, 3, size, size), num_beams=2, max_new_tokens=5)
    print(json.dumps({"module": type(model).__module__, "shape": list(ids.shape)}))
    """
)


def test_dry_run_folder_loads_in_a_clean_virtual_environment(dry_run, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    closure = requirement_closure("torch", "transformers")
    assert "pillow" not in closure and "accelerate" not in closure
    link_distributions(closure.values(), site_packages)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONNOUSERSITE": "1",
    }
    script = tmp_path / "check_model.py"
    script.write_text(CLEAN_MODEL_CHECK)
    checked = subprocess.run(
        [python, script, str(dry_run)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert checked.returncode == 0, checked.stderr[-3000:]
    result = json.loads(checked.stdout.strip().splitlines()[-1])
    assert result["module"].startswith("transformers_modules.") and result["shape"][0] == 2

    # The processor decodes images with Pillow, which transformers does not require: the model card's usage code
    # runs once Pillow (and nothing else) is added.
    pillow = tmp_path / "pillow"
    pillow.mkdir()
    link_distributions(requirement_closure("pillow").values(), pillow)
    (snippet,) = re.findall(r"```python\n(.*?)```", (dry_run / "README.md").read_text(), flags=re.DOTALL)
    assert f'"{REPO_ID}"' in snippet
    (tmp_path / "usage.py").write_text(snippet.replace(f'"{REPO_ID}"', repr(str(dry_run))))
    used = subprocess.run(
        [python, "usage.py"], capture_output=True, text=True, cwd=tmp_path, env={**env, "PYTHONPATH": str(pillow)}
    )
    assert used.returncode == 0, used.stderr[-3000:]
    generated, piped = used.stdout.strip().splitlines()[-2:]
    assert generated.startswith("['") and generated.endswith("']")  # the list of one caption
    assert piped.startswith("[{'input_text': '', 'generated_text': ")  # the pipeline's record for the same image


# --- a loopback Hub: just enough of the Hub's HTTP API for create_repo, create_branch and upload_folder ---------------


class LoopbackHub(ThreadingHTTPServer):
    """Repositories in memory, committed files also written under `root/REPO/BRANCH/`. Every file is answered
    "regular" at preupload (sent base64 in the commit), so no LFS or Xet storage is needed. `fail` = (path fragment,
    status) makes every matching request fail with that status, as the Hub does (JSON error, X-Error-Message)."""

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), LoopbackHubHandler)
        self.root = root
        self.repos: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.commits: list[dict] = []
        self.fail: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class LoopbackHubHandler(BaseHTTPRequestHandler):
    server: LoopbackHub

    def log_message(self, *args):  # quiet: pytest shows what the assertions need
        pass

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:
            self.send_header("X-Error-Message", body.get("error", ""))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.handle_request(b"")

    def do_POST(self):
        self.handle_request(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def handle_request(self, body: bytes) -> None:
        hub, path = self.server, urlsplit(self.path).path
        hub.requests.append({"method": self.command, "path": path, "authorization": self.headers["Authorization"]})
        if hub.fail and hub.fail[0] in path:
            status = hub.fail[1]
            return self.reply(status, {"error": f"loopback hub says {status} for {path}"})
        if path == "/api/repos/create":
            request = json.loads(body)
            repo_id = f"{request['organization']}/{request['name']}"
            if repo_id in hub.repos:
                return self.reply(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
            hub.repos[repo_id] = {"request": request, "branches": {"main": {".gitattributes": b"*.bin lfs\n"}}}
            return self.reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":
            try:
                ModelCard(json.loads(body)["content"])
            except ValueError as error:
                return self.reply(400, {"error": "invalid metadata", "errors": [{"message": str(error)}]})
            return self.reply(200, {"errors": [], "warnings": []})
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(branch|preupload|commit)/(.+)", path)
        if not match or match.group(1) not in hub.repos:
            return self.reply(404, {"error": f"no such endpoint or repository: {self.command} {path}"})
        branches = hub.repos[match.group(1)]["branches"]
        action, revision = match.group(2), unquote(match.group(3))
        if action == "branch":
            if revision in branches:
                return self.reply(409, {"error": "Reference already exists"})
            branches[revision] = dict(branches["main"])
            return self.reply(200, {})
        if revision not in branches:
            return self.reply(404, {"error": f"Invalid rev id: {revision}"})
        if action == "preupload":
            files = json.loads(body)["files"]
            answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]
            return self.reply(200, {"files": answer})
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header, operations = lines[0], lines[1:]
        assert header["key"] == "header" and all(op["key"] == "file" for op in operations), "only regular files"
        for operation in operations:
            content = base64.b64decode(operation["value"]["content"])
            branches[revision][operation["value"]["path"]] = content
            target = hub.root / match.group(1) / revision / operation["value"]["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        oid = hashlib.sha1(body).hexdigest()
        hub.commits.append({"repo_id": match.group(1), "revision": revision, "summary": header["value"]["summary"]})
        return self.reply(200, {"commitUrl": f"{hub.url}/{match.group(1)}/commit/{oid}", "commitOid": oid})


@pytest.fixture
def hub(tmp_path):
    server = LoopbackHub(tmp_path / "hub")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_script(*args: str, endpoint: str, tmp_path: Path, token: str | None = FAKE_TOKEN):
    """push_to_hub.py in a fresh process, talking to `endpoint` (HF_ENDPOINT is read when huggingface_hub is
    imported), with staging under a private TMPDIR and huggingface_hub's logs at debug level (they name every
    request: the token must not be in them either)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", HF_HUB_VERBOSITY="debug", HF_HOME=str(tmp_path / "hf_home"))
    env["TMPDIR"] = str(tmp_path / "tmp")
    if token is not None:
        env["HF_TOKEN"] = token
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, str(ROOT / "push_to_hub.py"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


def test_upload_to_a_loopback_hub_sends_the_dry_run_files_to_the_branch(run_folder, dry_run, hub, tmp_path):
    before = tree_hash(run_folder)
    message = "Tiny captioner: first upload"
    done = run_script(
        str(run_folder),
        REPO_ID,
        "--private",
        "--branch",
        "dev",
        "--commit_message",
        message,
        endpoint=hub.url,
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert FAKE_TOKEN not in done.stdout + done.stderr
    assert f"Uploaded {len(RUN_FILES)} files to {REPO_ID}" in done.stdout
    assert hub.repos[REPO_ID]["request"]["visibility"] == "private"
    assert hub.commits == [{"repo_id": REPO_ID, "revision": "dev", "summary": message}]
    received = hub.root / REPO_ID / "dev"
    assert sorted(p.name for p in received.iterdir()) == sorted(p.name for p in dry_run.iterdir())
    for path in dry_run.iterdir():
        assert (received / path.name).read_bytes() == path.read_bytes(), path.name
    assert set(hub.repos[REPO_ID]["branches"]["main"]) == {".gitattributes"}  # main untouched
    # huggingface_hub fetches its public agent-harness registry without a token; every repository call carries it.
    repository_calls = [r for r in hub.requests if r["path"] != "/api/agent-harnesses"]
    assert [r["path"] for r in repository_calls] == [
        "/api/repos/create",
        "/api/models/tiny-org/tiny-captioner/branch/dev",
        "/api/validate-yaml",
        "/api/models/tiny-org/tiny-captioner/preupload/dev",
        "/api/models/tiny-org/tiny-captioner/commit/dev",
    ]
    assert {r["authorization"] for r in repository_calls} == {f"Bearer {FAKE_TOKEN}"}
    assert tree_hash(run_folder) == before and not any((tmp_path / "tmp").iterdir())

    # A second push to main: the repository exists (409 is fine), the files land on main.
    again = run_script(str(run_folder), REPO_ID, endpoint=hub.url, tmp_path=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(hub.repos[REPO_ID]["branches"]["main"]) == RUN_FILES | {".gitattributes"}
    assert hub.commits[-1] == {"repo_id": REPO_ID, "revision": "main", "summary": "Upload captioner model"}


def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


UPLOAD_FAILURES = {
    # name: (failing path fragment and status, or None; the sentence's words)
    "token_refused": (("/api/", 401), "refused the token"),
    "no_permission": (("/api/", 403), "Your token may not write to"),
    "commit_forbidden": (("/commit/", 403), "Your token may not write to"),
    "network": (None, "Could not reach the Hub"),
    "no_token": (None, "No Hugging Face token was found: run `hf auth login`, or set HF_TOKEN"),
}


@pytest.mark.parametrize("case", sorted(UPLOAD_FAILURES))
def test_failed_uploads_say_why_keep_the_token_secret_and_change_nothing(case, run_folder, hub, tmp_path):
    fail, words = UPLOAD_FAILURES[case]
    hub.fail = fail
    before = tree_hash(run_folder)
    endpoint = closed_port() if case == "network" else hub.url
    failed = run_script(
        str(run_folder),
        REPO_ID,
        endpoint=endpoint,
        tmp_path=tmp_path,
        token=None if case == "no_token" else FAKE_TOKEN,
    )
    assert failed.returncode == 1
    # The last line is our sentence (above it: huggingface_hub's debug log, tracebacks of what it swallows included).
    sentence = failed.stderr.strip().splitlines()[-1]
    assert sentence.startswith("push_to_hub.py: ") and words in sentence
    if case != "no_token":
        assert REPO_ID in sentence and "Nothing local was changed" in sentence
    assert FAKE_TOKEN not in failed.stdout + failed.stderr
    assert tree_hash(run_folder) == before and not any((tmp_path / "tmp").iterdir())
    assert not (hub.root / REPO_ID).exists()
    if case == "no_token":
        assert hub.requests == []


def test_model_card_names_the_synthetic_variant():
    from captioning.hub.model_card import dataset_info

    hard = dataset_info({"dataset_format": "synthetic", "synthetic_variant": "hard"}, None)
    easy = dataset_info({"dataset_format": "synthetic", "synthetic_variant": "easy"}, None)
    assert hard["type"] == "synthetic-scenes-hard" and "ten kinds" in hard["description"]
    assert easy["type"] == "synthetic-scenes" and "coloured shapes" in easy["description"]
