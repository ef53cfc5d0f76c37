"""CaptionerForConditionalGeneration on tiny configs, for the Transformer and GPT-2 decoders: cache and batch
equivalence, captions sharing an image, attention maps and bad inputs. Forward, gradients, embeddings, save/load and
generate()'s outputs in each mode are checked for every encoder × decoder in test_modeling_common.py."""

from functools import partial

import pytest
import torch
from conftest import random_inputs, strip_padding, tiny_model
from transformers import GenerationMixin
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutput

# Tiny presets at 32×32: ResNet (stride 8 after two stages) gives a 4×4 grid; ViT with 8-pixel patches 16 + CLS.
IMAGE_POSITIONS = {"resnet": 16, "vit": 17}


def test_loss_ignores_padding_labels(pair, tokenizer):
    model = tiny_model(*pair, tokenizer)
    inputs = random_inputs(model, batch_size=1, length=6)
    inputs["labels"][0, -2:] = -100
    full = model(**inputs)
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(inputs["labels"])
    logits = full.logits[0, :4]
    expected = torch.nn.functional.cross_entropy(logits, inputs["labels"][0, :4])
    assert torch.allclose(full.loss, expected, atol=1e-6)
    assert decoder_input_ids[0, 0].item() == model.config.decoder_start_token_id
    assert decoder_input_ids[0, 1:].tolist()[:4] == inputs["labels"][0, :4].tolist()


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_with_and_without_cache_agree(pair, tokenizer, num_beams):
    model = tiny_model(*pair, tokenizer)
    pixel_values = random_inputs(model, batch_size=3)["pixel_values"]
    cached = model.generate(pixel_values, num_beams=num_beams, max_new_tokens=10, use_cache=True)
    uncached = model.generate(pixel_values, num_beams=num_beams, max_new_tokens=10, use_cache=False)
    assert torch.equal(cached, uncached)


def test_batched_generation_matches_single_images(pair, tokenizer):
    model = tiny_model(*pair, tokenizer)
    pixel_values = random_inputs(model, batch_size=3)["pixel_values"]
    batched = model.generate(pixel_values, num_beams=5, max_new_tokens=10)
    for i in range(3):
        single = model.generate(pixel_values[i : i + 1], num_beams=5, max_new_tokens=10)[0]
        ids = model.config.pad_token_id, model.config.eos_token_id
        assert strip_padding(batched[i], *ids) == strip_padding(single, *ids)


def test_cross_attention_keys_values_projected_once_per_image(pair, tokenizer):
    model = tiny_model(*pair, tokenizer)
    pixel_values = random_inputs(model, batch_size=2)["pixel_values"]
    if pair[1] == "transformer":
        projections = [layer.cross_attn.k_proj for layer in model.decoder.layers]
    else:
        projections = [block.crossattention.c_attn for block in model.decoder.transformer.h]
    calls = []
    hooks = [p.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0])) for p in projections]
    try:
        ids = model.generate(pixel_values, max_new_tokens=8, min_new_tokens=8)
        assert ids.shape[1] == 9
        assert calls == [2] * len(projections), f"cross-attention K/V projected {calls} for 8 steps"
        calls.clear()
        ids = model.generate(pixel_values, num_beams=3, max_new_tokens=8, min_new_tokens=8)
        # Once per image, not once per beam.
        assert calls == [2] * len(projections), f"cross-attention K/V projected {calls} for 8 steps of 3 beams"
    finally:
        for hook in hooks:
            hook.remove()


def test_beam_search_reorders_only_the_self_attention_cache(pair, tokenizer, monkeypatch):
    """An image's beams share one copy of its cross-attention K/V, so beam search leaves them in place (no copy per
    step); the result equals transformers' own way: features copied per beam and the whole cache reordered."""
    model = tiny_model(*pair, tokenizer)
    pixel_values = random_inputs(model, batch_size=3)["pixel_values"]
    reordered = []
    original = DynamicCache.reorder_cache

    def spy(cache, beam_idx):
        reordered.append(cache)
        return original(cache, beam_idx)

    monkeypatch.setattr(DynamicCache, "reorder_cache", spy)
    kwargs = {"num_beams": 4, "max_new_tokens": 8, "min_new_tokens": 8, "output_scores": True}
    kept = model.generate(pixel_values, return_dict_in_generate=True, **kwargs)
    caches = {id(cache) for cache in reordered}
    assert len(reordered) == 8 and len(caches) == 1  # once per step
    assert id(kept.cache.cross_attention_cache) not in caches
    assert id(kept.cache.self_attention_cache) in caches
    assert kept.cache.cross_attention_cache.layers[0].keys.shape[0] == 3  # one row per image, not per beam
    assert kept.cache.self_attention_cache.layers[0].keys.shape[0] == 12

    monkeypatch.setattr(model, "_reorder_cache", lambda cache, beam_idx: cache.reorder_cache(beam_idx) or cache)
    monkeypatch.setattr(
        model, "_expand_inputs_for_generation", partial(GenerationMixin._expand_inputs_for_generation, model)
    )
    copied = model.generate(pixel_values, return_dict_in_generate=True, **kwargs)
    assert copied.cache.cross_attention_cache.layers[0].keys.shape[0] == 12
    assert torch.equal(kept.sequences, copied.sequences)
    torch.testing.assert_close(kept.sequences_scores, copied.sequences_scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_captions_sharing_an_image_equal_captions_with_copies(pair, tokenizer, attn_implementation):
    """The decoder reads B images for g·B caption rows (rows i·g … i·g+g-1 read image i) exactly as it reads g copies
    of each image: logits, cross-attention maps and loss; a batch that is no whole multiple is named."""
    model = tiny_model(*pair, tokenizer)
    for config in (model.config, model.config.text_config):
        if config is not None:
            config._attn_implementation = attn_implementation
    inputs = random_inputs(model, batch_size=2, length=6)
    encoder_outputs = model.encoder(inputs["pixel_values"])
    labels = torch.cat([inputs["labels"], inputs["labels"].flip(1).clamp(min=5)]).repeat_interleave(3, dim=0)[:6]
    copies = BaseModelOutput(last_hidden_state=encoder_outputs.last_hidden_state.repeat_interleave(3, dim=0))
    shared, copied = (
        model(encoder_outputs=encoder_outputs, labels=labels),
        model(encoder_outputs=copies, labels=labels),
    )
    torch.testing.assert_close(shared.logits, copied.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.loss, copied.loss, atol=1e-6, rtol=0)
    shared = model(encoder_outputs=encoder_outputs, labels=labels, output_attentions=True)
    copied = model(encoder_outputs=copies, labels=labels, output_attentions=True)
    torch.testing.assert_close(shared.logits, copied.logits, atol=1e-5, rtol=0)
    for ours, theirs in zip(shared.cross_attentions, copied.cross_attentions, strict=True):
        assert ours.shape == theirs.shape and ours.shape[0] == 6
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="5 caption rows for 2 images"):
        model(encoder_outputs=encoder_outputs, labels=labels[:5])


def test_a_prompt_row_count_other_than_the_image_count_is_named(pair, tokenizer):
    """One decoder_input_ids row for two images would otherwise be grouped silently per image (beams split across
    images): it is refused with a sentence, as VisionEncoderDecoderModel fails on it."""
    model = tiny_model(*pair, tokenizer)
    pixel_values = random_inputs(model, batch_size=2)["pixel_values"]
    prompt = torch.tensor([[model.config.decoder_start_token_id, 7]])
    for kwargs in ({"num_beams": 4}, {"do_sample": True, "num_return_sequences": 2}):
        with pytest.raises(ValueError, match=r"decoder_input_ids has 1 row\(s\) for 2 image\(s\)"):
            model.generate(pixel_values, decoder_input_ids=prompt, max_new_tokens=3, **kwargs)


def test_gpt2_cross_attention_shares_images_under_a_materialised_mask(tokenizer, monkeypatch):
    """Where transformers materialises GPT-2's all-ones image mask (export, some devices), it has one row per image:
    the folded queries of an image share it, equal to per-caption copies."""
    import transformers.masking_utils as masking_utils

    model = tiny_model("vit", "gpt2", tokenizer)
    encoder_outputs = model.encoder(random_inputs(model, batch_size=2)["pixel_values"])
    ids = torch.randint(5, len(tokenizer), (6, 5), generator=torch.Generator().manual_seed(0))
    copies = BaseModelOutput(last_hidden_state=encoder_outputs.last_hidden_state.repeat_interleave(3, dim=0))
    expected = model(encoder_outputs=copies, decoder_input_ids=ids).logits
    monkeypatch.setattr(masking_utils, "_ignore_bidirectional_mask_sdpa", lambda *args, **kwargs: False)
    for implementation in ("sdpa", "eager"):
        model.config.text_config._attn_implementation = implementation
        shared = model(encoder_outputs=encoder_outputs, decoder_input_ids=ids).logits
        torch.testing.assert_close(shared, expected, atol=1e-5, rtol=0)
    model.config.text_config._attn_implementation = "sdpa"


def test_cross_attentions_are_maps_over_image_positions(pair, tokenizer):
    encoder, decoder = pair
    model = tiny_model(encoder, decoder, tokenizer)
    inputs = random_inputs(model)
    output = model(**inputs, output_attentions=True)
    heads = model.config.decoder_attention_heads
    assert len(output.cross_attentions) == model.config.decoder_layers
    for maps in output.cross_attentions:
        assert maps.shape == (2, heads, inputs["labels"].shape[1], IMAGE_POSITIONS[encoder])
        torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
    # Asking for maps switches nothing else: the logits are those of the fast path.
    torch.testing.assert_close(output.logits, model(**inputs).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("position_embedding_type", ["learned", "sinusoidal_2d", "none"])
@pytest.mark.parametrize("encoder", ["resnet", "vit"])
def test_position_embedding_types(encoder, position_embedding_type, tokenizer):
    model = tiny_model(encoder, "transformer", tokenizer, position_embedding_type=position_embedding_type)
    assert hasattr(model.encoder.bridge, "position_embeddings") == (position_embedding_type == "learned")
    pixel_values = random_inputs(model)["pixel_values"]
    features = model.encoder(pixel_values).last_hidden_state
    assert features.shape == (2, IMAGE_POSITIONS[encoder], model.config.d_model)
    # With identical features everywhere, only positions can tell image positions apart.
    model.encoder.backbone = ConstantBackbone(features_shape={"resnet": (2, 32, 4, 4), "vit": (2, 17, 32)}[encoder])
    rows = model.encoder(pixel_values).last_hidden_state[0]
    first_patch = 1 if encoder == "vit" else 0
    varies = (rows[first_patch:] - rows[first_patch]).abs().max() > 1e-4
    assert bool(varies) == (position_embedding_type != "none")


class ConstantBackbone(torch.nn.Module):
    """Stands in for a vision backbone whose every position sees the same feature."""

    def __init__(self, features_shape: tuple[int, ...]):
        super().__init__()
        self.features_shape = features_shape

    def forward(self, pixel_values, return_dict=True):
        return BaseModelOutput(last_hidden_state=torch.ones(self.features_shape))


def test_bad_pixel_values_raise_clear_errors(pair, tokenizer):
    model = tiny_model(*pair, tokenizer)
    size = model.config.image_size
    with pytest.raises(ValueError, match=r"shape \(batch_size, 3, height, width\).*\(3, 32, 32\)"):
        model(pixel_values=torch.randn(3, size, size), labels=torch.tensor([[5, 6]]))
    with pytest.raises(ValueError, match=r"shape \(batch_size, 3, height, width\).*\(1, 4, 32, 32\)"):
        model.generate(torch.randn(1, 4, size, size))
    with pytest.raises(ValueError, match="float tensor"):
        model.generate(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    with pytest.raises(ValueError, match="pixel_values"):
        model(decoder_input_ids=torch.tensor([[2]]))
    if pair[0] == "vit":
        with pytest.raises(ValueError, match="do not match this ViT's image size"):
            model.generate(torch.randn(1, 3, 48, 48))


def test_bad_labels_and_lengths_raise_clear_errors(pair, tokenizer):
    model = tiny_model(*pair, tokenizer)
    pixel_values = random_inputs(model)["pixel_values"]
    vocab_size = len(tokenizer)
    with pytest.raises(ValueError, match=rf"outside \[0, {vocab_size}\)"):
        model(pixel_values=pixel_values, labels=torch.tensor([[5, vocab_size], [5, 6]]))
    with pytest.raises(ValueError, match="labels or decoder_input_ids"):
        model(pixel_values=pixel_values)
    if pair[1] == "transformer":
        too_long = torch.full((2, model.config.max_position_embeddings + 1), 5)
        with pytest.raises(ValueError, match="max_position_embeddings"):
            model(pixel_values=pixel_values, labels=too_long)


@pytest.mark.parametrize("decoder", ["transformer", "gpt2"])
def test_decoder_attention_mask_hides_padding(decoder, tokenizer):
    """With a mask, whatever sits in the masked (left-padding) positions cannot change the real tokens' logits."""
    model = tiny_model("resnet", decoder, tokenizer)
    pixel_values = random_inputs(model, batch_size=1)["pixel_values"]
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    first = torch.tensor([[0, 0, 2, 7, 9, 11]])
    second = torch.tensor([[40, 41, 2, 7, 9, 11]])
    logits = [
        model(pixel_values=pixel_values, decoder_input_ids=ids, decoder_attention_mask=mask).logits[0, 2:]
        for ids in (first, second)
    ]
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=0)
    unmasked = model(pixel_values=pixel_values, decoder_input_ids=second).logits[0, 2:]
    assert not torch.allclose(unmasked, logits[1], atol=1e-3), "without the mask the padding should leak in"


def test_any_grid_backbone_works_convnext(tokenizer):
    from transformers import ConvNextConfig

    vision_config = ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2)
    model = tiny_model("resnet", "transformer", tokenizer, vision_config=vision_config)
    assert type(model.encoder.backbone).__name__ == "ConvNextModel"
    output = model(**random_inputs(model))
    assert output.encoder_last_hidden_state.shape == (2, 16, model.config.d_model)
    assert model.generate(random_inputs(model)["pixel_values"], max_new_tokens=3).shape[0] == 2


def test_vision_config_without_automodel_is_rejected(tokenizer):
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="GPT2Config, which does not build a vision model reading pixel_values"):
        tiny_model("resnet", "transformer", tokenizer, vision_config=GPT2Config(n_layer=1))


def test_precomputed_vision_features_give_the_same_outputs(pair, tokenizer):
    model = tiny_model(*pair, tokenizer)
    inputs = random_inputs(model)
    features = model.encoder.backbone_features(inputs["pixel_values"])
    from_features = model(vision_features=features, labels=inputs["labels"])
    torch.testing.assert_close(from_features.logits, model(**inputs).logits, atol=0, rtol=0)
