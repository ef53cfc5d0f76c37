"""The package's shape: captioning/'s imports point one way (no cycles, no import tucked into a function to dodge one,
no private name borrowed from another module), modeling_captioner never imports the workshop, and the old flat
module paths still import for one release."""

import ast
import runpy
import sys
import warnings
from pathlib import Path

import pytest

from captioning import _moved

ROOT = Path(__file__).resolve().parents[1]
# Lower layers never import higher ones; `fast_decoding` sits beside the model, below the subpackages.
LAYERS = ("captioning.fast_decoding", "captioning.data", "captioning.evaluation", "captioning.training")
LAYERS += ("captioning.hub", "captioning.cli")
# evaluate.load copies caption_metric/ into its own cache and imports it from there: not part of the package graph.
OUTSIDE_GRAPH = ("captioning/evaluation/caption_metric/",)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(package: str) -> dict[str, Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    return {
        module_name(path): path
        for path in files
        if not any(str(path.relative_to(ROOT)).startswith(skip) for skip in OUTSIDE_GRAPH)
    }


MODULES = package_modules("captioning")


def is_package(name: str) -> bool:
    return (ROOT / name.replace(".", "/") / "__init__.py").is_file()


def imports_of(path: Path) -> list[tuple[ast.stmt, str, list[str], bool]]:
    """(statement, module, names, at module level) for every import of a captioning or modeling_captioner module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node, alias.name, [], id(node) in top_level))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node, node.module, [alias.name for alias in node.names], id(node) in top_level))
    return [item for item in found if item[1].split(".")[0] in ("captioning", "modeling_captioner")]


def edges(name: str, path: Path) -> set[str]:
    """The captioning modules `name` imports, a `from PACKAGE import submodule` counted as the submodule."""
    targets = set()
    for _, module, names, _ in imports_of(path):
        if not module.startswith("captioning"):
            continue
        submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        targets.update(submodules or [module])
    targets.discard(name)
    return targets


def layer(name: str) -> int:
    return next((i for i, prefix in enumerate(LAYERS) if name == prefix or name.startswith(prefix + ".")), -1)


def test_every_module_is_in_a_layer():
    outside = [n for n in MODULES if layer(n) < 0 and n not in ("captioning", "captioning._moved")]
    assert not outside, f"modules outside the layers {LAYERS}: {outside}"


def test_imports_point_one_way():
    wrong = [
        f"{name} imports {target}"
        for name, path in MODULES.items()
        for target in edges(name, path)
        if layer(name) >= 0 and layer(target) > layer(name)
    ]
    assert not wrong, "a lower layer imports a higher one:\n" + "\n".join(wrong)


def test_no_import_cycle():
    graph = {name: edges(name, path) for name, path in MODULES.items()}
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycle = [*path[path.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    # The check itself finds a cycle when there is one.
    graph["captioning.data.records"] = {"captioning.cli.main"}
    state.clear()
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        for node in sorted(graph):
            if node not in state:
                visit(node)


def test_no_function_level_or_private_imports():
    problems = []
    for path in MODULES.values():
        for node, module, names, at_top in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if module.startswith("captioning") and not at_top:
                problems.append(f"{where}: `{module}` imported inside a function or block")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and module != "captioning":
                problems.append(f"{where}: private {private} imported from {module}")
            if module.startswith("captioning") and is_package(module):
                not_modules = [n for n in names if f"{module}.{n}" not in MODULES]
                if not_modules:
                    problems.append(f"{where}: {not_modules} from package {module}'s __init__; import the module")
    assert not problems, "\n".join(problems)


def test_the_model_never_imports_the_workshop():
    for name, path in package_modules("modeling_captioner").items():
        for node, module, _, _ in imports_of(path):
            assert not module.startswith("captioning"), f"{name}:{node.lineno} imports {module}"


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_old_module_paths_still_import(old):
    new = _moved.MOVED[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = __import__(old, fromlist=["_"])
    assert module is sys.modules[new]
    assert module.__spec__.name == new  # the new module keeps its own spec


def test_old_command_paths_still_run(monkeypatch, capsys):
    for old, prog in (("captioning.shards", "captioner shards"), ("captioning.evaluation", "captioner evaluate")):
        monkeypatch.setattr(sys, "argv", [old, "--help"])
        monkeypatch.delitem(sys.modules, old, raising=False)  # as in a fresh `python -m OLD`
        with warnings.catch_warnings(), pytest.raises(SystemExit) as exit:
            warnings.simplefilter("ignore", DeprecationWarning)
            runpy.run_module(old, run_name="__main__", alter_sys=True)
        assert exit.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: {prog}")


def function_lengths(path: Path) -> dict[str, int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        f"{path.relative_to(ROOT)}:{node.name}": node.end_lineno - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def test_train_py_reads_on_one_screen():
    """train.py's main reads arguments → data → model → schedule → Accelerate → loop → final evaluation in at most 80
    lines; the pieces it calls (train.py's and captioning/training/'s functions) are at most 60 lines each."""
    lengths = function_lengths(ROOT / "train.py")
    assert lengths.pop("train.py:main") <= 80
    for path in sorted((ROOT / "captioning" / "training").glob("*.py")):
        lengths.update(function_lengths(path))
    too_long = {name: n for name, n in lengths.items() if n > 60}
    assert not too_long, f"functions over 60 lines: {too_long}"
