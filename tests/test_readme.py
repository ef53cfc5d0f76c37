"""The README's usage snippets run (in order, sharing one namespace), and its two commands are the ones CI and the
Makefile use."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for index, block in enumerate(blocks):
        code = compile(block, f"README.md python block {index}", "exec")
        if block.startswith("# needs the Hub"):
            continue
        exec(code, namespace)
    assert isinstance(namespace["ids"].tolist(), list)


def test_readme_commands_are_the_makefile_and_ci_ones():
    bash_blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    commands = [line.split("#")[0].strip() for line in bash_blocks[0].splitlines() if line.strip()]
    assert commands == ["make train", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^train:", makefile, flags=re.MULTILINE) and re.search(r"^test:", makefile, flags=re.MULTILINE)
    assert "configs/synthetic-small.yaml" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
