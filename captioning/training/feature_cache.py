"""On-disk cache of a frozen backbone's outputs (the precomputed-features technique): while the encoder is frozen,
each image is decoded and run through the backbone once; later epochs read its features and skip both."""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn


def cache_key(backbone: nn.Module, image_processor, dataset_fingerprint: str) -> str:
    """Features are valid only for these exact weights, this image transform and this dataset split."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    digest.update(image_processor.to_json_string().encode())
    digest.update(dataset_fingerprint.encode())
    return digest.hexdigest()[:20]


class FeatureCache:
    """
    One row per dataset index in a memory-mapped `.npy` file, plus a mask of the rows already written.

    Args:
        root: folder of caches; this cache lives in `root/key`.
        key: from `cache_key(...)`: other weights or transforms give another folder, never stale features.
        num_items: the dataset's length.
    """

    def __init__(self, root: str | Path, key: str, num_items: int):
        self.directory = Path(root) / key
        self.num_items = num_items
        self._features: np.ndarray | None = None
        self.filled = np.zeros(num_items, dtype=bool)
        meta_path = self.directory / "meta.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("num_items") != num_items:
                raise ValueError(
                    f"Feature cache {self.directory} holds {meta.get('num_items')} items, not {num_items}."
                )
            self._features = np.load(self.directory / "features.npy", mmap_mode="r+")
            self.filled = np.load(self.directory / "filled.npy")

    def __len__(self) -> int:
        return int(self.filled.sum())

    @property
    def complete(self) -> bool:
        return bool(self.filled.all())

    def get(self, indices: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self._features[indices]))

    def put(self, indices: list[int], features: torch.Tensor) -> None:
        values = features.detach().to("cpu", torch.float32).numpy()
        if self._features is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._features = np.lib.format.open_memmap(
                self.directory / "features.npy", mode="w+", dtype=np.float32, shape=(self.num_items, *values.shape[1:])
            )
            (self.directory / "meta.json").write_text(json.dumps({"num_items": self.num_items}))
        self._features[indices] = values
        self.filled[indices] = True

    def flush(self) -> None:
        """Write features before the mask that vouches for them, so a crash never leaves rows marked but unwritten."""
        if self._features is None:
            return
        self._features.flush()
        temporary = self.directory / "filled.tmp.npy"
        np.save(temporary, self.filled)
        temporary.replace(self.directory / "filled.npy")


@torch.no_grad()
def cached_vision_features(model: nn.Module, cache: FeatureCache, indices: list[int], pixel_values) -> torch.Tensor:
    """The backbone's features for these dataset rows: read where cached, computed (and stored) where not."""
    missing = [i for i, index in enumerate(indices) if not cache.filled[index]]
    if missing:
        encoder = model.encoder
        features = encoder.backbone_features(pixel_values[missing])
        cache.put([indices[i] for i in missing], features)
    return cache.get(list(indices))
