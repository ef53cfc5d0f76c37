"""One test per coupling to transformers' internals listed in modeling_captioner.py (COUPLINGS TO TRANSFORMERS'
INTERNALS): the private API still has the shape the model relies on, and the model's override is the one used."""

import inspect
import warnings

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    CompileConfig,
    GenerationMixin,
    GPT2Config,
    GPT2Model,
    PreTrainedModel,
    ResNetConfig,
    ResNetModel,
    ViTConfig,
    ViTModel,
)
from transformers.activations import ACT2CLS, GELUTanh, NewGELUActivation
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.conversion_mapping import extract_weight_conversions_for_model
from transformers.generation import utils as generation_utils
from transformers.generation.configuration_utils import GenerationMode
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Block

from captioning.fast_decoding import enable_fast_decoding
from modeling_captioner import CaptionerForConditionalGeneration
from modeling_captioner.modeling_captioner import CaptionerGPT2CrossAttention, CaptionerTransformersCouplings

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt2_model(tokenizer):
    return tiny_model("resnet", "gpt2", tokenizer)


@pytest.fixture(scope="module")
def transformer_model(tokenizer):
    return tiny_model("resnet", "transformer", tokenizer)


def image_inputs(model, batch_size: int = 2) -> dict:
    torch.manual_seed(0)
    size = model.config.image_size
    return {
        "pixel_values": torch.randn(batch_size, 3, size, size),
        "decoder_input_ids": torch.randint(4, model.config.vocab_size, (batch_size, 4)),
    }


def spy(monkeypatch, cls, name: str) -> list:
    """Record every call of `cls.name` (its keyword names), still running the original."""
    calls, original = [], getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        calls.append(set(kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapper)
    return calls


def parameter_names(function) -> list[str]:
    return list(inspect.signature(function).parameters)


# 1. The class swap on GPT-2's cross-attention (and its GELU).


def test_gpt2_cross_attention_swap_keeps_gpt2s_shape(gpt2_model, monkeypatch):
    blocks = gpt2_model.decoder.transformer.h
    assert all(type(block.crossattention) is CaptionerGPT2CrossAttention for block in blocks)
    assert not any(isinstance(m, NewGELUActivation) for m in gpt2_model.modules())
    assert any(isinstance(m, GELUTanh) for m in gpt2_model.modules())
    assert ACT2CLS["gelu_new"] is NewGELUActivation  # the class speed_up_gpt2 looks for
    attention = GPT2Attention(gpt2_model.config.text_config, is_cross_attention=True, layer_idx=0)
    for name in ("c_attn", "q_attn", "c_proj", "attn_dropout", "resid_dropout"):
        assert isinstance(getattr(attention, name), torch.nn.Module), name
    for name in ("is_cross_attention", "split_size", "head_dim", "layer_idx", "scaling", "reorder_and_upcast_attn"):
        assert hasattr(attention, name), name
    assert callable(attention._upcast_and_reordered_attn)
    assert set(parameter_names(GPT2Block.forward)) >= {"encoder_hidden_states", "encoder_attention_mask", "cache"}

    # GPT2Block calls the swapped class with the keywords its forward names, and the numbers are GPT-2's own.
    accepted = set(parameter_names(CaptionerGPT2CrossAttention.forward))
    calls = spy(monkeypatch, CaptionerGPT2CrossAttention, "forward")
    inputs = image_inputs(gpt2_model)
    with torch.no_grad():
        ours = gpt2_model(**inputs).logits
    assert len(calls) == len(blocks)
    assert all("encoder_hidden_states" in call and call <= accepted | {"position_ids"} for call in calls), calls
    monkeypatch.undo()
    for block in blocks:
        block.crossattention.__class__ = GPT2Attention
    try:
        with torch.no_grad():
            stock = gpt2_model(**inputs).logits
    finally:
        for block in blocks:
            block.crossattention.__class__ = CaptionerGPT2CrossAttention
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)


# 2. `_attn_implementation` set to "eager" for one call.


def test_output_attentions_under_sdpa_switches_gpt2_to_eager_for_the_call(gpt2_model):
    text_config = gpt2_model.config.text_config
    before = text_config._attn_implementation
    text_config._attn_implementation = "sdpa"
    seen = []
    block = gpt2_model.decoder.transformer.h[0]
    hook = block.attn.register_forward_pre_hook(lambda module, args: seen.append(module.config._attn_implementation))
    try:
        with torch.no_grad():
            outputs = gpt2_model(**image_inputs(gpt2_model), output_attentions=True)
            gpt2_model(**image_inputs(gpt2_model))
        assert seen == ["eager", "sdpa"]  # GPT-2 reads its config's implementation at every call
        assert text_config._attn_implementation == "sdpa"
        assert len(outputs.cross_attentions) == len(gpt2_model.decoder.transformer.h)
        assert all(weights is not None and weights.shape[:3] == (2, 2, 4) for weights in outputs.cross_attentions)
    finally:
        hook.remove()
        text_config._attn_implementation = before


# 3. forward.__signature__ built once.


def test_forward_signature_is_prebuilt_and_what_generate_reads(transformer_model, monkeypatch):
    forward = CaptionerForConditionalGeneration.forward
    assert isinstance(forward.__dict__.get("__signature__"), inspect.Signature)
    assert forward.__signature__ == inspect.signature(inspect.unwrap(forward))
    assert CaptionerForConditionalGeneration.is_remote_code()  # where generate() reads the signature every step
    seen = []
    real_signature = inspect.signature

    def signature(function, *args, **kwargs):
        seen.append(getattr(function, "__func__", function))
        return real_signature(function, *args, **kwargs)

    monkeypatch.setattr(generation_utils.inspect, "signature", signature)
    transformer_model.generate(image_inputs(transformer_model)["pixel_values"], max_new_tokens=3)
    assert forward in seen


# 4. Overrides of private GenerationMixin methods.


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("_beam_search", ["self", "input_ids", "logits_processor", "stopping_criteria", "generation_config"]),
        ("_prepare_static_cache", ["self", "cache_implementation", "batch_size", "max_cache_len"]),
        ("_expand_inputs_for_generation", ["self", "expand_size", "is_encoder_decoder", "input_ids"]),
        ("_prepare_generated_length", ["self", "generation_config", "has_default_max_length"]),
        ("_valid_auto_compile_criteria", ["self", "model_kwargs", "generation_config"]),
        ("_default_compile_config", ["self"]),
    ],
)
def test_private_generate_methods_keep_their_parameters(name, parameters):
    owner = PreTrainedModel if name == "_default_compile_config" else GenerationMixin
    names = parameter_names(getattr(owner, name))
    assert names[: len(parameters)] == parameters, names
    if name == "_beam_search":
        assert names[len(parameters)] == "synced_gpus"
        assert GENERATION_MODES_NAMES[GenerationMode.BEAM_SEARCH] == "_beam_search"
    if name == "_prepare_static_cache":
        assert names[-1] == "model_kwargs"  # read as kwargs["model_kwargs"] or the last positional argument
    if name in CaptionerTransformersCouplings.__dict__:  # ours, not a later base's, is the one the model has
        assert getattr(CaptionerForConditionalGeneration, name) is CaptionerTransformersCouplings.__dict__[name]


GENERATION_MODES_NAMES = generation_utils.GENERATION_MODES_MAPPING


def test_beam_search_reaches_the_overrides(transformer_model, monkeypatch):
    cls = CaptionerTransformersCouplings
    calls = {
        name: spy(monkeypatch, cls, name)
        for name in ("_beam_search", "_reorder_cache", "_expand_inputs_for_generation", "_prepare_generated_length")
    }
    transformer_model.generate(image_inputs(transformer_model)["pixel_values"], num_beams=2, max_new_tokens=3)
    assert all(calls.values()), {name: len(c) for name, c in calls.items()}
    assert transformer_model.__dict__.get("forward") is None  # _beam_search put the eager forward back


def test_static_cache_generation_reaches_the_overrides(tokenizer, monkeypatch):
    model = tiny_model("resnet", "transformer", tokenizer)
    enable_fast_decoding(model, compile=False)
    cls = CaptionerTransformersCouplings
    calls = {name: spy(monkeypatch, cls, name) for name in ("_prepare_static_cache", "create_masks_for_generate")}
    pixel_values = image_inputs(model)["pixel_values"]
    first = model.generate(pixel_values, max_new_tokens=3)
    kept = model.__dict__["_kept_static_cache"][1]
    again = model.generate(pixel_values, max_new_tokens=3)
    assert all(calls.values()), {name: len(c) for name, c in calls.items()}
    assert model.__dict__["_kept_static_cache"][1] is kept and torch.equal(first, again)


# 5. The checkpoint key mapping, and what save_pretrained writes.


def test_old_checkpoint_keys_map_to_the_bridge_and_save_writes_new_names(transformer_model, tmp_path):
    (renaming,) = extract_weight_conversions_for_model(transformer_model)
    assert renaming.rename_source_key("encoder.projection.weight")[0] == "encoder.bridge.projection.weight"
    assert renaming.rename_source_key("encoder.layers.0.fc1.bias")[0] == "encoder.bridge.layers.0.fc1.bias"
    for key in ("encoder.bridge.projection.weight", "encoder.backbone.embedder.weight", "decoder.layers.0.fc1.bias"):
        assert renaming.rename_source_key(key) == (key, None)
    assert "save_original_format" in parameter_names(PreTrainedModel.save_pretrained)
    names = {name for name, _ in transformer_model.named_parameters()}
    transformer_model.save_pretrained(tmp_path / "new")
    assert any(k.startswith("encoder.bridge.") for k in load_file(tmp_path / "new" / "model.safetensors"))
    assert set(load_file(tmp_path / "new" / "model.safetensors")) <= set(transformer_model.state_dict())
    # transformers' own default would write the pre-bridge names (the mapping reversed); those load too.
    transformer_model.save_pretrained(tmp_path / "old", save_original_format=True)
    old = load_file(tmp_path / "old" / "model.safetensors")
    assert "encoder.projection.weight" in old and not any(k.startswith("encoder.bridge.") for k in old)
    for folder in ("new", "old"):
        loaded, info = CaptionerForConditionalGeneration.from_pretrained(tmp_path / folder, output_loading_info=True)
        assert not any(info.values()), (folder, info)
        assert {name for name, _ in loaded.named_parameters()} == names


# 6. deprecate_kwarg on forward.


def test_deprecate_kwarg_renames_past_key_values(transformer_model):
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        outputs = transformer_model(**image_inputs(transformer_model), past_key_values=cache, use_cache=True)
    assert outputs.cache is cache and cache.get_seq_length() == 4
    assert any(issubclass(w.category, FutureWarning) and "past_key_values" in str(w.message) for w in caught)


# 7. The config's fields shared with GPT-2's text config.


def test_config_shares_fields_with_gpt2s_text_config(gpt2_model):
    config = gpt2_model.config
    text_config = config.get_text_config(decoder=True)
    assert text_config is config.text_config  # what generate() and resize_token_embeddings write to
    before = config.eos_token_id, config.vocab_size
    try:
        text_config.eos_token_id = 7
        assert config.eos_token_id == 7
        config.vocab_size = before[1] + 1
        assert text_config.vocab_size == before[1] + 1
    finally:
        config.eos_token_id, config.vocab_size = before
    assert text_config.eos_token_id == before[0] and text_config.vocab_size == before[1]


# 8. The GPT-2 decoder's tied-weight keys.


def test_gpt2_tied_weights_keys_api(gpt2_model):
    assert "all_submodels" in parameter_names(PreTrainedModel.get_expanded_tied_weights_keys)
    decoder = gpt2_model.decoder
    assert decoder.all_tied_weights_keys == decoder.get_expanded_tied_weights_keys(all_submodels=False)
    assert decoder.all_tied_weights_keys == {"lm_head.weight": "transformer.wte.weight"}


# 9. AutoModel's config → class mapping.


def test_auto_model_mapping_finds_vision_classes():
    mapping = AutoModel._model_mapping
    assert mapping.get(ResNetConfig, None) is ResNetModel and mapping.get(ViTConfig, None) is ViTModel
    assert mapping.get(GPT2Config, None) is GPT2Model


# 10. CompileConfig._compile_all_devices.


def test_compile_all_devices_flag_is_read_by_generate(tokenizer, monkeypatch):
    model = tiny_model("resnet", "transformer", tokenizer)
    # enable_fast_decoding also compiles the encoder where it compiles the step; that compile is not checked here.
    monkeypatch.setattr(torch, "compile", lambda function, **options: function)
    assert not CompileConfig()._compile_all_devices
    for all_devices in (False, True):
        enable_fast_decoding(model, all_devices=all_devices)
        static = model._prepare_static_cache(
            "static", 2, 8, None, {"encoder_outputs": (torch.zeros(2, 4, model.config.d_model),)}
        )
        criteria = model._valid_auto_compile_criteria({"cache": static}, model.generation_config)
        assert criteria is all_devices  # on a CPU only the flag turns compilation on
