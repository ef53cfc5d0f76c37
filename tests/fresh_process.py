"""Loading and captioning saved folders in a new Python process, with the package installed or unimportable (remote
code): what a user on another machine does. Shared by the remote-code and LSTM tests."""

import json
import subprocess
import sys
import textwrap

from conftest import checkout_env

FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    mode, folders, images = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    if mode == "remote":
        sys.modules["modeling_captioner"] = None  # importing it now raises ImportError
        try:
            import modeling_captioner  # noqa: F401
            raise SystemExit("modeling_captioner is still importable")
        except ImportError:
            pass
    else:
        import modeling_captioner  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModel, AutoProcessor
    trust = mode == "remote"
    results = {}
    for folder in folders:
        model = AutoModel.from_pretrained(folder, trust_remote_code=trust)
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust)
        ids = model.generate(**processor(images=images, return_tensors="pt"), num_beams=5, max_new_tokens=8)
        results[folder] = {
            "ids": ids.tolist(),
            "captions": processor.batch_decode(ids, skip_special_tokens=True),
            "model_module": type(model).__module__,
            "processor_module": type(processor).__module__,
        }
    print(json.dumps(results))
    """
)


def run_fresh_process(mode: str, folders: list[str], images: list[str], workdir) -> dict:
    """Load and caption each folder in a new Python process ("installed": package imported; "remote": package
    unimportable, trust_remote_code); returns what it printed, per folder."""
    env = checkout_env(HF_MODULES_CACHE=str(workdir / "modules"))
    if mode == "remote":
        env["PYTHONPATH"] = ""
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, mode, json.dumps(folders), json.dumps(images)],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])
