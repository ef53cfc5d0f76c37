"""The GPU-speed paths, checked on CPU: static cache and compiled decoding give the eager dynamic-cache ids, the
training forward compiles whole, attention goes through transformers' registry, and gradient checkpointing changes no
loss or gradient."""

import copy

import pytest
import torch
from conftest import DECODERS, tiny_config, tiny_model
from transformers import AttentionInterface
from transformers.cache_utils import EncoderDecoderCache, StaticLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from captioning.fast_decoding import disable_fast_decoding, enable_fast_decoding, supports_fast_decoding
from modeling_captioner import CaptionerForConditionalGeneration

ALL_DECODERS = (*DECODERS, "lstm")
MODES = {
    "greedy": {},
    "beam": {"num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.6},
    "sampling": {"do_sample": True, "top_k": 20, "temperature": 1.3},
}


def pixels(model, batch_size: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    return torch.randn(batch_size, 3, size, size, generator=generator)


def generate(model, pixel_values, mode: str, **kwargs):
    torch.manual_seed(1234)  # sampling draws the same numbers on both paths
    return model.generate(
        pixel_values,
        max_new_tokens=9,
        min_new_tokens=9,  # every row runs to the end: the whole cache is used
        return_dict_in_generate=True,
        output_scores=True,
        **MODES[mode],
        **kwargs,
    )


@pytest.mark.parametrize("decoder", ALL_DECODERS)
@pytest.mark.parametrize("mode", list(MODES))
def test_static_cache_gives_the_dynamic_cache_ids(decoder, mode, tokenizer):
    model = tiny_model("resnet", decoder, tokenizer)
    pixel_values = pixels(model)
    dynamic = generate(model, pixel_values, mode)
    static = generate(model, pixel_values, mode, cache_implementation="static")
    assert isinstance(static.cache, EncoderDecoderCache)
    assert all(isinstance(layer, StaticLayer) for layer in static.cache.self_attention_cache.layers)
    assert torch.equal(dynamic.sequences, static.sequences)
    for dynamic_scores, static_scores in zip(dynamic.scores, static.scores, strict=True):
        torch.testing.assert_close(dynamic_scores, static_scores, atol=1e-5, rtol=1e-5)


def test_a_static_cache_is_reused_for_the_same_shape_and_rebuilt_for_another(tokenizer):
    """generate() hands the cache of one call, reset, to the next call of the same shape (no allocation, the fixed
    addresses a CUDA graph needs); another batch size, or a longer one, gets a cache of its own. Ids stay those of the
    dynamic cache throughout, a prompt's (whose decoder mask becomes a fixed-shape one) included."""
    model = tiny_model("resnet", "transformer", tokenizer)
    pixel_values = pixels(model)
    calls = [
        (pixel_values, 9),
        (pixel_values, 9),
        (pixel_values[:2], 9),
        (pixel_values[:2], 5),
        (pixel_values[:2], 12),
    ]
    caches = []
    for images, length in calls:
        kwargs = {"max_new_tokens": length, "return_dict_in_generate": True}
        dynamic = model.generate(images, **kwargs).sequences
        static = model.generate(images, cache_implementation="static", **kwargs)
        assert torch.equal(static.sequences, dynamic)
        caches.append(static.cache)
    assert caches[1] is caches[0] and caches[2] is not caches[1]
    assert caches[3] is caches[2], "a shorter call fits in the cache it has"
    assert caches[4] is not caches[3]
    with torch.inference_mode():  # as the caption command and warm_up decode: a cache of inference tensors
        inference = model.generate(pixel_values[:1], max_new_tokens=12, cache_implementation="static")
    assert torch.equal(model.generate(pixel_values[:1], max_new_tokens=12, cache_implementation="static"), inference)
    prompt = torch.tensor([[model.config.decoder_start_token_id, 7, 8]] * 2)
    kwargs = {"decoder_input_ids": prompt, "decoder_attention_mask": torch.ones_like(prompt), "max_new_tokens": 6}
    dynamic = model.generate(pixel_values[:2], **kwargs)
    assert torch.equal(model.generate(pixel_values[:2], cache_implementation="static", **kwargs), dynamic)


@pytest.mark.parametrize("decoder", ALL_DECODERS)
def test_the_decoder_text_config_is_read_without_a_copy(decoder, tokenizer):
    """transformers reads the decoder's layer count through get_text_config(decoder=True) several times a caption;
    the from-scratch decoders' config is its own text config (no deep copy per call), GPT-2's is its config."""
    config = tiny_config("resnet", decoder, tokenizer)
    text = config.get_text_config(decoder=True)
    assert text is (config.text_config if decoder == "gpt2" else config)
    assert text.num_hidden_layers == config.decoder_layers
    assert text.num_attention_heads == config.decoder_attention_heads


def test_static_cache_longer_than_the_positions_is_refused(tokenizer):
    model = tiny_model("resnet", "transformer", tokenizer)
    limit = model.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"max_position_embeddings={limit}"):
        model.generate(pixels(model, 1), max_new_tokens=limit + 5, cache_implementation="static")


@pytest.fixture
def compile_counter(monkeypatch):
    """Counts the calls generate() sends to a compiled step (the first one, which fills the caches, runs eagerly), and
    as "encoder" those to the compiled image encoder."""
    calls = []
    original = torch.compile

    def counting_compile(function, **options):
        compiled = original(function, **options)

        def call(*args, **kwargs):
            calls.append(kwargs["decoder_input_ids"].shape if "decoder_input_ids" in kwargs else "encoder")
            return compiled(*args, **kwargs)

        return call

    monkeypatch.setattr(torch, "compile", counting_compile)
    return calls


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("mode", ["greedy", "sampling", "beam"])
def test_compiled_decoding_gives_the_eager_ids(decoder, mode, tokenizer, compile_counter):
    """fullgraph=True: a graph break in the decoding step fails this test instead of slowing generation."""
    torch._dynamo.reset()
    model = tiny_model("vit", decoder, tokenizer)
    pixel_values = pixels(model, batch_size=2)
    eager = generate(model, pixel_values, mode)
    assert enable_fast_decoding(model, all_devices=True)
    assert model.generation_config.compile_config.fullgraph
    with torch._dynamo.config.patch(error_on_recompile=False):
        compiled = generate(model, pixel_values, mode)
        again = generate(model, pixel_values, mode)
    assert torch.equal(eager.sequences, compiled.sequences)
    assert torch.equal(compiled.sequences, again.sequences)
    for eager_scores, compiled_scores in zip(eager.scores, compiled.scores, strict=True):
        torch.testing.assert_close(eager_scores, compiled_scores, atol=1e-4, rtol=1e-4)
    # 9 tokens: the compiled encoder, one eager prefill, 8 compiled steps; twice.
    assert compile_counter.count("encoder") == 2
    steps = [shape for shape in compile_counter if shape != "encoder"]
    assert len(steps) == 2 * 8 and all(shape[1] == 1 for shape in steps)
    disable_fast_decoding(model)
    assert "forward" not in model.encoder.__dict__
    assert torch.equal(generate(model, pixel_values, mode).sequences, eager.sequences)


def test_the_lstm_keeps_its_state_cache(tokenizer):
    model = tiny_model("resnet", "lstm", tokenizer)
    assert not supports_fast_decoding(model)
    before = model.generation_config.to_dict()
    assert enable_fast_decoding(model) is False
    assert model.generation_config.to_dict() == before


def training_batch(model, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(5, model.config.vocab_size, (2, 7), generator=generator)
    labels[1, 5:] = -100
    return {
        "pixel_values": pixels(model, batch_size=2, seed=seed),
        "labels": labels,
        "decoder_attention_mask": (labels != -100).long(),
    }


@pytest.mark.parametrize(
    "encoder,decoder,backend",
    [
        ("resnet", "transformer", "inductor"),  # the main job's model, as train.py --torch_compile compiles it
        ("vit", "transformer", "aot_eager"),
        ("vit", "gpt2", "aot_eager"),
        ("resnet", "lstm", "aot_eager"),
    ],
)
def test_training_forward_compiles_whole(encoder, decoder, backend, tokenizer):
    """`--torch_compile` compiles this forward: fullgraph=True fails on any graph break (backbone, bridge, decoder,
    loss); the compiled loss and gradients are the eager ones. Past the main job's pair, the capture (dynamo, and
    AOTAutograd's forward and backward graphs) is checked with the aot_eager backend: inductor's C++ code generation
    costs a minute more on two cores and checks nothing else here."""
    torch._dynamo.reset()
    model = tiny_model(encoder, decoder, tokenizer).train()
    for module in model.modules():  # the same numbers on both paths: no random dropout masks
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    batch = training_batch(model)
    eager = model(**batch).loss
    eager.backward()
    eager_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend=backend)(**batch).loss
    compiled.backward()
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    compiled_grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(compiled_grads) == len(eager_grads)
    for ours, theirs in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-3)


def saved_activation_bytes(model, batch) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    torch.manual_seed(7)  # the same dropout masks with and without checkpointing
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    model.zero_grad()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()], sum(saved)


@pytest.mark.parametrize("decoder", ALL_DECODERS)
def test_gradient_checkpointing_keeps_loss_and_gradients(decoder, tokenizer):
    """Checkpointed layers (bridge encoder layers, the decoder's layers or LSTM steps) keep less for the backward pass
    and recompute it: the loss and every gradient stay the same, dropout included."""
    model = tiny_model("vit", decoder, tokenizer, encoder_layers=2).train()
    assert model.supports_gradient_checkpointing
    batch = training_batch(model)
    loss, grads, plain_bytes = saved_activation_bytes(model, batch)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    checkpointed_loss, checkpointed_grads, checkpointed_bytes = saved_activation_bytes(model, batch)
    assert torch.equal(loss, checkpointed_loss)
    for plain, checkpointed in zip(grads, checkpointed_grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-5)
    assert checkpointed_bytes < 0.8 * plain_bytes, (checkpointed_bytes, plain_bytes)
    model.activation_checkpointing_disable()
    assert saved_activation_bytes(model, batch)[2] == plain_bytes


@pytest.mark.parametrize("decoder", ALL_DECODERS)
def test_attention_implementations_agree(decoder, tokenizer):
    """eager, sdpa and flex (forward only: flex has no CPU backward) give the same logits for every sub-model; a
    backbone or GPT-2 without the requested kernel falls back to one it has."""
    for encoder in ("vit", "resnet"):
        config = tiny_config(encoder, decoder, tokenizer)
        torch.manual_seed(0)
        reference = CaptionerForConditionalGeneration._from_config(copy.deepcopy(config), attn_implementation="eager")
        reference.eval()
        batch = training_batch(reference)
        expected = reference(**batch).logits
        for implementation in ("sdpa", "flex_attention"):
            model = CaptionerForConditionalGeneration._from_config(
                copy.deepcopy(config), attn_implementation=implementation
            ).eval()
            model.load_state_dict(reference.state_dict())
            assert model.config._attn_implementation == implementation
            with torch.no_grad():
                logits = model(**batch).logits
            valid = batch["decoder_attention_mask"].bool()
            torch.testing.assert_close(logits[valid], expected[valid], atol=1e-5, rtol=1e-4)


def test_every_attention_goes_through_the_registry(tokenizer):
    """A kernel registered with transformers' AttentionInterface runs the ViT backbone's, the bridge's and the
    decoder's self- and cross-attention alike."""
    calls = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        calls.append(type(module).__name__)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("captioner_spy", spy)
    for decoder in DECODERS:
        calls.clear()
        config = tiny_config("vit", decoder, tokenizer)
        model = CaptionerForConditionalGeneration._from_config(config, attn_implementation="captioner_spy").eval()
        with torch.no_grad():
            model(**training_batch(model))
        backbone_layers = model.config.vision_config.num_hidden_layers
        bridge_layers, decoder_layers = model.config.encoder_layers, model.config.decoder_layers
        assert bridge_layers > 0 and calls.count("ViTAttention") == backbone_layers
        if decoder == "transformer":  # the bridge's layers, then self- and cross-attention per decoder layer
            assert calls.count("CaptionerAttention") == bridge_layers + 2 * decoder_layers
        else:
            assert calls.count("CaptionerAttention") == bridge_layers
            assert calls.count("GPT2Attention") == decoder_layers
            assert calls.count("CaptionerGPT2CrossAttention") == model.config.decoder_layers
