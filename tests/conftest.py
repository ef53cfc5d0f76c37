"""Shared fixtures: a caption tokenizer built from real-looking captions, tiny configs for every encoder × decoder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from captioning.data.synthetic import all_scenes, render_scene
from modeling_captioner import CaptionerConfig, CaptionerForConditionalGeneration
from tokenization import build_tokenizer

ENCODERS = ("resnet", "vit")
DECODERS = ("transformer", "gpt2")
# train.py flags for the smallest real runs: the tiny preset, a few steps' worth of warmup, no METEOR, no tracking.
TINY = [
    "--preset",
    "tiny",
    "--per_device_train_batch_size",
    "16",
    "--per_device_eval_batch_size",
    "32",
    "--num_beams",
    "2",
    "--max_new_tokens",
    "12",
    "--logging_steps",
    "1",
    "--learning_rate",
    "1e-3",
    "--num_warmup_steps",
    "2",
    "--vocab_size",
    "300",
    "--no_meteor",
    "--no-with_tracking",
]

PAIRS = [(encoder, decoder) for encoder in ENCODERS for decoder in DECODERS]
PAIR_IDS = [f"{encoder}-{decoder}" for encoder, decoder in PAIRS]

FLICKR_STYLE = [
    "A black dog is running through the grass .",
    "Two children play on a swing set in a park .",
    "A man in a red jacket climbs a snowy mountain .",
    "A girl with an umbrella walks down a rainy street .",
    "Three people sit on a bench near the water .",
]


def checkout_env(**overrides: str) -> dict[str, str]:
    """The environment of a subprocess that must import this checkout's packages, installed or not (the GPU machine
    has the project on PYTHONPATH only, and pytest's `pythonpath` setting reaches pytest's own process alone), offline."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pythonpath = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=pythonpath, **overrides)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped, with the reason, where torch sees no GPU (CPU-only CI)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer():
    captions = [scene.caption for scene in all_scenes()] + FLICKR_STYLE
    return build_tokenizer(captions, vocab_size=300)


@pytest.fixture(params=PAIRS, ids=PAIR_IDS)
def pair(request) -> tuple[str, str]:
    return request.param


def tiny_config(encoder: str, decoder: str, tokenizer, **overrides) -> CaptionerConfig:
    return CaptionerConfig.from_preset("tiny", encoder=encoder, decoder=decoder, tokenizer=tokenizer, **overrides)


def tiny_model(encoder: str, decoder: str, tokenizer, seed: int = 0, **overrides) -> CaptionerForConditionalGeneration:
    torch.manual_seed(seed)
    return CaptionerForConditionalGeneration(tiny_config(encoder, decoder, tokenizer, **overrides)).eval()


def random_inputs(model, batch_size: int = 2, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    pixel_values = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator)
    labels = torch.randint(5, config.vocab_size, (batch_size, length), generator=generator)
    labels[-1, length - 2 :] = -100  # a shorter caption, padded
    return {"pixel_values": pixel_values, "labels": labels}


def strip_padding(row: torch.Tensor, pad_token_id: int, eos_token_id: int) -> list[int]:
    """A generated sequence up to its first EOS. Beam search fills finished rows with `pad_token_id or eos`, which
    is EOS when the pad id is 0 (transformers 5.24 generation/utils.py), so both pad and EOS can trail a caption."""
    ids = row.tolist()
    if eos_token_id in ids[1:]:
        ids = ids[: ids.index(eos_token_id, 1) + 1]
    while len(ids) > 1 and ids[-1] == pad_token_id:
        ids.pop()
    return ids


def scene_images(count: int, image_size: int = 64):
    scenes = all_scenes()[::3][:count]
    return [render_scene(scene, image_size) for scene in scenes], [scene.caption for scene in scenes]


def reset_accelerator_state() -> None:
    """Accelerate keeps one state per process (a real run is one process); each in-process run starts clean, as
    accelerate's own AccelerateTestCase does."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def fresh_accelerator_state():
    """Use with `pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")` in modules that run train.py
    in-process."""
    reset_accelerator_state()
    yield
    reset_accelerator_state()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and lose 100× when another job shares the two cores (use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
