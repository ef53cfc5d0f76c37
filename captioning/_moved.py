"""The flat module paths of captioner 0.1, kept importable for one release: `import captioning.metrics` still works,
warns with a DeprecationWarning naming the new path, and gives the new module itself (the same object, so patching
either name patches both). `python -m captioning.evaluation` and `python -m captioning.shards` still run. Remove in
0.3."""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings

# Old path → new path.
MOVED = {
    "captioning.attention_maps": "captioning.cli.attention",
    "captioning.augmentation": "captioning.training.augmentation",
    "captioning.caption": "captioning.cli.caption",
    "captioning.collator": "captioning.training.collator",
    "captioning.demo": "captioning.cli.demo",
    "captioning.diagnostics": "captioning.evaluation.diagnostics",
    "captioning.downloads": "captioning.data.web.downloads",
    "captioning.feature_cache": "captioning.training.feature_cache",
    "captioning.image_sources": "captioning.data.images",
    "captioning.losses": "captioning.training.losses",
    "captioning.metrics": "captioning.evaluation.metrics",
    "captioning.model_card": "captioning.hub.model_card",
    "captioning.reporting": "captioning.training.reporting",
    "captioning.shards": "captioning.data.web.shards",
    "captioning.streaming": "captioning.data.web.streams",
    "captioning.synthetic": "captioning.data.synthetic",
    "captioning.synthetic_hard": "captioning.data.synthetic_hard",
    "captioning.time_budget": "captioning.training.time_budget",
    "captioning.trainer": "captioning.training.trainer",
    "captioning.unfreezing": "captioning.training.unfreezing",
    "captioning.url_data": "captioning.data.web.url_rows",
    "captioning.web_data": "captioning.data.web.splits",
}


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, new_name: str):
        self.new_name = new_name

    def create_module(self, spec):
        warnings.warn(
            f"{spec.name} moved to {self.new_name}; the old path goes away in captioner 0.3.",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.new_name)
        self.new_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # The new module ran when it was imported; importlib has just set its __spec__ to the old path's, so put back
        # its own (reload, pickle and find_spec look there).
        module.__spec__ = self.new_spec

    def get_code(self, fullname: str):
        """For `python -m OLD_PATH`: the new module's code, run as __main__."""
        return importlib.util.find_spec(self.new_name).loader.get_code(self.new_name)


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Answers imports of the old paths in `MOVED`; every other import goes on to the usual finders."""

    def find_spec(self, fullname, path=None, target=None):
        new_name = MOVED.get(fullname)
        if new_name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(new_name))


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
