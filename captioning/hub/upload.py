"""Share a captioner on the 🤗 Hub: check a model folder, stage exactly the files that belong on the Hub (weights,
configs, remote code, tokenizer, processor, pictures, a generated model card) and upload them, with errors a user can
act on. The model folder is only read: files are staged in a temporary folder (or the dry-run folder)."""

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, constants, get_token, is_offline_mode
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RevisionNotFoundError
from huggingface_hub.utils import validate_repo_id
from transformers.dynamic_module_utils import get_relative_import_files

from captioning.hub.model_card import build_model_card, read_json

try:  # huggingface_hub 2.x sends its requests with httpx2, 1.x with httpx
    from httpx2 import RequestError as _HttpRequestError
except ImportError:  # pragma: no cover
    from httpx import RequestError as _HttpRequestError

logger = logging.getLogger(__name__)

MODEL_TYPE = "captioner"
CONFIG_FILES = ("config.json", "generation_config.json")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# What a run leaves beside the model that documents it: the card shows the pictures, and metrics.json /
# training_args.json are where its numbers come from. predictions.json stays home: it holds the dataset's reference
# captions, which are not ours to redistribute. checkpoints/ (optimizer states) and TensorBoard logs stay home too.
RECORD_FILES = ("metrics.json", "training_args.json", "samples.png", "training_curves.png")
# Files accelerate's save_state writes into train.py's checkpoints/step_N folders.
TRAINING_STATE_FILES = ("training_state.json", "optimizer.bin", "scheduler.bin", "random_states_0.pkl")
NETWORK_ERRORS = (_HttpRequestError, ConnectionError, TimeoutError)


class PushToHubError(Exception):
    """A push that cannot go on, said as a sentence naming the folder, file or repository and what is expected."""


@dataclass
class ModelFolder:
    """A checked captioner model folder and the files of it that belong on the Hub (paths relative to it)."""

    path: Path
    config: dict
    weight_files: list[str]
    files: list[str] = field(default_factory=list)


def _auto_map_modules(auto_map: dict) -> list[str]:
    """Module names an auto_map points at ("module.Class", or [slow, fast] for tokenizers); references into other
    repositories ("repo--module.Class") carry no local file."""
    references = []
    for value in auto_map.values():
        references += value if isinstance(value, (list, tuple)) else [value]
    return sorted({r.rsplit(".", 1)[0] for r in references if isinstance(r, str) and "--" not in r})


def _remote_code_files(folder: Path, config_files: list[str]) -> list[str]:
    """The .py files the folder's auto_maps name, with the files they import relatively (as transformers resolves
    them when loading with trust_remote_code=True)."""
    files: list[str] = []
    for config_name in config_files:
        data = read_json(folder / config_name) or {}
        auto_maps = [data.get("auto_map") or {}]
        auto_maps += [v.get("auto_map") or {} for v in data.values() if isinstance(v, dict)]
        for auto_map in auto_maps:
            for module in _auto_map_modules(auto_map):
                name = f"{module}.py"
                if not (folder / name).is_file():
                    raise PushToHubError(
                        f"{folder / config_name} names {name} in its auto_map, but {folder} has no {name}: the Hub "
                        "copy could not load with trust_remote_code=True. Re-save the model and processor with "
                        "save_pretrained after `import modeling_captioner`, which copies its source files."
                    )
                if name in files:
                    continue
                files.append(name)
                for imported in get_relative_import_files(folder / name):
                    imported_name = Path(imported).name
                    if not Path(imported).is_file():
                        raise PushToHubError(
                            f"{folder / name} imports {imported_name}, which is not in {folder}; copy it there (or "
                            "re-save the model with save_pretrained)."
                        )
                    if imported_name not in files:
                        files.append(imported_name)
    return files


def _weight_files(folder: Path) -> list[str]:
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    index = read_json(folder / "model.safetensors.index.json")
    if index is not None:
        shards = sorted(set((index.get("weight_map") or {}).values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if not shards or missing:
            raise PushToHubError(
                f"{folder / 'model.safetensors.index.json'} lists weight files that are not in {folder}: "
                f"{missing or 'none listed'}; expected every shard beside the index."
            )
        return ["model.safetensors.index.json", *shards]
    if (folder / "pytorch_model.bin").is_file():
        raise PushToHubError(
            f"{folder} holds its weights as pytorch_model.bin; the Hub copy takes safetensors. Re-save with "
            "model.save_pretrained(folder), whose default is model.safetensors."
        )
    raise PushToHubError(f"{folder} has no model.safetensors; expected the weights that save_pretrained writes.")


def inspect_model_folder(folder: str | Path) -> ModelFolder:
    """
    Check that `folder` is a captioner model folder that will load from the Hub, and list the files to upload.

    Args:
        folder (`str` or `Path`): train.py's output folder, or a folder written by `model.save_pretrained` and
            `processor.save_pretrained`.

    Returns:
        [`ModelFolder`]: the folder, its config and the files that belong on the Hub.

    Raises:
        [`PushToHubError`]: a sentence saying what is missing or wrong and what was expected.
    """
    path = Path(folder)
    expected = (
        "expected a captioner model folder: train.py's --output_dir, or one written by model.save_pretrained and "
        "processor.save_pretrained"
    )
    if not path.exists():
        raise PushToHubError(f"CHECKPOINT {path} does not exist; {expected}.")
    if not path.is_dir():
        raise PushToHubError(f"CHECKPOINT {path} is a file; {expected}.")
    if not (path / "config.json").is_file():
        if any((path / name).is_file() for name in TRAINING_STATE_FILES):
            run_folder = path.parent.parent if path.parent.name == "checkpoints" else None
            hint = f" ({run_folder})" if run_folder is not None and (run_folder / "config.json").is_file() else ""
            raise PushToHubError(
                f"{path} is a training-state checkpoint (optimizer, scheduler and random states for "
                f"--resume_from_checkpoint), not a model folder; push the run's output folder{hint}, which holds "
                "config.json and model.safetensors."
            )
        raise PushToHubError(f"{path} has no config.json; {expected}.")
    try:
        config = read_json(path / "config.json")
    except ValueError as error:
        raise PushToHubError(str(error)) from error
    if config.get("model_type") != MODEL_TYPE:
        raise PushToHubError(
            f"{path / 'config.json'} has model_type {config.get('model_type')!r}; {expected}, whose config.json "
            f"has model_type {MODEL_TYPE!r}."
        )
    if not config.get("auto_map"):
        raise PushToHubError(
            f"{path / 'config.json'} has no auto_map, so the Hub copy could not load with trust_remote_code=True; "
            "re-save the model with save_pretrained after `import modeling_captioner`, which registers the Auto "
            "classes."
        )
    weight_files = _weight_files(path)
    processor_files = [name for name in PROCESSOR_FILES if (path / name).is_file()]
    if not processor_files:
        raise PushToHubError(
            f"{path} has no processor_config.json; save the processor beside the model "
            "(processor.save_pretrained(folder)) so AutoProcessor loads from the Hub."
        )
    tokenizer_files = [name for name in TOKENIZER_FILES if (path / name).is_file()]
    if not {"tokenizer.json", "vocab.txt", "vocab.json"} & set(tokenizer_files):
        raise PushToHubError(
            f"{path} has no tokenizer (tokenizer.json, vocab.txt or vocab.json); save the processor or tokenizer "
            "beside the model with save_pretrained."
        )
    configs = [name for name in CONFIG_FILES if (path / name).is_file()]
    try:
        code = _remote_code_files(path, [*configs, *processor_files, "tokenizer_config.json"])
    except ValueError as error:
        raise PushToHubError(str(error)) from error
    records = [name for name in RECORD_FILES if (path / name).is_file()]
    files = [*weight_files, *configs, *code, *processor_files, *tokenizer_files, *records]
    return ModelFolder(path=path, config=config, weight_files=weight_files, files=list(dict.fromkeys(files)))


def _model_card(model_folder: ModelFolder, repo_id: str, license: str) -> ModelCard:
    try:
        return build_model_card(model_folder.path, repo_id, model_folder.weight_files, license=license)
    except ValueError as error:
        raise PushToHubError(f"Cannot write the model card of {model_folder.path}: {error}") from error


def stage(model_folder: ModelFolder, card: ModelCard, destination: Path) -> list[str]:
    """Copy the folder's Hub files into `destination` and write the card as README.md; returns the staged names."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in model_folder.files:
        shutil.copyfile(model_folder.path / name, destination / name)
    card.save(destination / "README.md")
    if (model_folder.path / "README.md").is_file():
        logger.warning(f"{model_folder.path / 'README.md'} is replaced by the generated model card on the Hub.")
    return ["README.md", *model_folder.files]


def _is_previous_dry_run(path: Path) -> bool:
    """A folder holding only files that a dry run writes, with a captioner card: safe to replace."""
    entries = list(path.iterdir())
    allowed = {"README.md", *CONFIG_FILES, *PROCESSOR_FILES, *TOKENIZER_FILES, *RECORD_FILES}
    for entry in entries:
        weights = entry.name.startswith("model") and entry.name.endswith((".safetensors", ".safetensors.index.json"))
        if (
            not entry.is_file()
            or entry.is_symlink()
            or not (entry.name in allowed or weights or entry.suffix == ".py")
        ):
            return False
    try:
        card = ModelCard.load(path / "README.md")
        config = read_json(path / "config.json") or {}
    except (OSError, ValueError):
        return False
    return "captioner" in (card.data.tags or []) and config.get("model_type") == MODEL_TYPE


def prepare_dry_run_folder(path: str | Path, checkpoint: Path) -> Path:
    """The dry-run folder, empty: a new or empty folder, or a previous dry run (whose files are removed)."""
    path = Path(path)
    resolved, source = path.resolve(), checkpoint.resolve()
    if resolved == source or source in resolved.parents:
        raise PushToHubError(
            f"--dry_run {path} is inside CHECKPOINT {checkpoint}; choose a folder outside it, so that the checkpoint "
            "is never modified."
        )
    if path.exists() and not path.is_dir():
        raise PushToHubError(f"--dry_run {path} is a file; expected a new or empty folder.")
    if path.is_dir() and any(path.iterdir()):
        if not _is_previous_dry_run(path):
            raise PushToHubError(
                f"--dry_run {path} is not empty and is not a previous dry run of push_to_hub.py; choose a new or "
                "empty folder (nothing was written)."
            )
        for entry in path.iterdir():
            entry.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def upload_folder_to_hub(
    folder: Path,
    repo_id: str,
    *,
    token: str,
    private: bool = False,
    branch: str | None = None,
    commit_message: str,
) -> str:
    """
    Upload a staged folder to `repo_id` (created if missing) on the endpoint of HF_ENDPOINT; returns the commit URL.

    Raises:
        [`PushToHubError`]: a refused token, a missing permission, a network failure or a rejected file, as a
            sentence naming the repository; the token never appears in it.
    """
    api = HfApi(token=token)
    where = f"{api.endpoint}/{repo_id}"
    try:
        api.create_repo(repo_id, private=True if private else None, exist_ok=True)
        if branch and branch != constants.DEFAULT_REVISION and not branch.startswith("refs/"):
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=branch, commit_message=commit_message)
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        detail = f" The Hub said: {error.server_message.strip().rstrip('.')}." if error.server_message else ""
        if status == 401:
            message = (
                f"The Hub refused the token for {where} (401 Unauthorized): it is invalid or expired. Log in again "
                "with `hf auth login`, or set HF_TOKEN to a token with write access."
            )
        elif status == 403:
            message = (
                f"Your token may not write to {where} (403 Forbidden): use a token with write access to the "
                f"{repo_id.split('/')[0]} namespace, or push to a namespace you own."
            )
        elif isinstance(error, RevisionNotFoundError):
            message = f"Branch {branch!r} of {where} was not found and could not be created."
        elif status == 404:
            message = f"{where} was not found, or your token cannot see it (404); check REPO_ID and the token."
        else:
            message = f"The Hub answered {status} while uploading to {where}; try again later."
        raise PushToHubError(_redact(f"{message}{detail} Nothing local was changed.", token)) from None
    except NETWORK_ERRORS as error:
        raise PushToHubError(
            _redact(
                f"Could not reach the Hub at {api.endpoint} ({type(error).__name__}: {error}) while uploading to "
                f"{repo_id}; check the network connection (and HF_ENDPOINT, if set), then run the command again. "
                "Nothing local was changed.",
                token,
            )
        ) from None
    except ValueError as error:  # e.g. the Hub's check of README.md's metadata, before any file is sent
        raise PushToHubError(
            _redact(f"The upload to {where} failed: {error} Nothing local was changed.", token)
        ) from None
    return commit.commit_url


def push_to_hub(
    checkpoint: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    branch: str | None = None,
    commit_message: str | None = None,
    dry_run: str | Path | None = None,
    license: str = "apache-2.0",
) -> dict:
    """
    Upload a captioner model folder to the Hub with a generated model card, or, with `dry_run`, write exactly what
    would be uploaded into that folder and upload nothing.

    Args:
        checkpoint (`str` or `Path`): the model folder (see [`inspect_model_folder`]); it is never modified.
        repo_id (`str`): `namespace/name` on the Hub.
        private (`bool`): create the repository private (an existing repository keeps its visibility).
        branch (`str`, *optional*): the branch to commit to, created from main when missing; default main.
        commit_message (`str`, *optional*): default "Upload captioner model".
        dry_run (`str` or `Path`, *optional*): a new or empty folder (or a previous dry run) to write the files to.
        license (`str`): the license id of the model card.

    Returns:
        `dict`: `files` (the uploaded names), `folder` (the dry-run folder) or `commit_url` (the upload's commit).
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushToHubError(f"REPO_ID {repo_id!r} is not a valid repository id: {error}") from None
    if repo_id.count("/") != 1:
        raise PushToHubError(
            f"REPO_ID {repo_id!r} must be NAMESPACE/NAME (your user name or an organisation, then the model name)."
        )
    model_folder = inspect_model_folder(checkpoint)
    card = _model_card(model_folder, repo_id, license)
    if dry_run is not None:
        folder = prepare_dry_run_folder(dry_run, model_folder.path)
        return {"files": stage(model_folder, card, folder), "folder": folder}
    if is_offline_mode():
        raise PushToHubError(
            "HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it (the Makefile and the tests set it), or "
            "write the files with --dry_run DIR."
        )
    token = get_token()
    if not token:
        raise PushToHubError(
            "No Hugging Face token was found: run `hf auth login`, or set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens). Nothing was uploaded."
        )
    with tempfile.TemporaryDirectory(prefix="captioner-push-") as staging:
        files = stage(model_folder, card, Path(staging))
        commit_url = upload_folder_to_hub(
            Path(staging),
            repo_id,
            token=token,
            private=private,
            branch=branch,
            commit_message=commit_message or "Upload captioner model",
        )
    return {"files": files, "commit_url": commit_url}


__all__ = ["ModelFolder", "PushToHubError", "inspect_model_folder", "prepare_dry_run_folder", "push_to_hub"]
