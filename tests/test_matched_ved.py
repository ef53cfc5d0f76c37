"""captioner built as VisionEncoderDecoderModel is (ViT + GPT-2, features passed on unprojected) computes what
VisionEncoderDecoderModel computes from the same weights — training logits and generated beams — while its own
pieces (fused GELU, cross-attention shared by an image's beams) change only the speed; and feature_projection="none"
behaves as documented."""

import copy

import pytest
import torch
from conftest import tiny_config
from transformers import GPT2LMHeadModel, VisionEncoderDecoderModel, ViTModel
from transformers.activations import GELUTanh, NewGELUActivation

from modeling_captioner import CaptionerConfig, CaptionerForConditionalGeneration


def matched_pair(tokenizer) -> tuple[CaptionerForConditionalGeneration, VisionEncoderDecoderModel]:
    torch.manual_seed(0)
    config = tiny_config("vit", "gpt2", tokenizer, encoder_layers=0, feature_projection="none")
    captioner = CaptionerForConditionalGeneration(config).eval()
    encoder = ViTModel(copy.deepcopy(config.vision_config), add_pooling_layer=False)
    decoder = GPT2LMHeadModel(copy.deepcopy(config.text_config))
    ved = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder).eval()
    for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
        setattr(ved.config, name, getattr(config, name))
        setattr(ved.generation_config, name, getattr(config, name))
    weights = {key.replace("encoder.backbone.", "encoder.", 1): value for key, value in captioner.state_dict().items()}
    missing, unexpected = ved.load_state_dict(weights, strict=False)
    assert not unexpected and all(key.endswith("lm_head.weight") for key in missing)  # tied, equal anyway
    assert sum(p.numel() for p in captioner.parameters()) == sum(p.numel() for p in ved.parameters())
    return captioner, ved


def test_same_weights_same_training_logits(tokenizer):
    captioner, ved = matched_pair(tokenizer)
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(3, 3, 32, 32, generator=generator)
    labels = torch.randint(5, len(tokenizer), (3, 7), generator=generator)
    ours = captioner(pixel_values=pixel_values, labels=labels)
    theirs = ved(pixel_values=pixel_values, labels=labels)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_beams", [1, 5])
def test_same_weights_same_generated_captions(tokenizer, num_beams):
    captioner, ved = matched_pair(tokenizer)
    pixel_values = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    kwargs = {"num_beams": num_beams, "max_new_tokens": 12, "return_dict_in_generate": True, "output_scores": True}
    ours = captioner.generate(pixel_values, **kwargs)
    theirs = ved.generate(pixel_values, **kwargs)
    assert torch.equal(ours.sequences, theirs.sequences)
    if num_beams > 1:
        torch.testing.assert_close(ours.sequences_scores, theirs.sequences_scores, atol=1e-5, rtol=0)


def test_gpt2_gelu_is_fused_and_equal(tokenizer):
    captioner, _ = matched_pair(tokenizer)
    activations = [block.mlp.act for block in captioner.decoder.transformer.h]
    assert all(type(act) is GELUTanh for act in activations)
    assert captioner.config.text_config.activation_function == "gelu_new"  # checkpoints stay plain GPT-2
    x = torch.randn(10_000) * 4
    torch.testing.assert_close(GELUTanh()(x), NewGELUActivation()(x), atol=2e-6, rtol=0)


def test_feature_projection_none_passes_backbone_features_on(tokenizer, tmp_path):
    config = tiny_config("vit", "gpt2", tokenizer, encoder_layers=0, feature_projection="none")
    model = CaptionerForConditionalGeneration(config).eval()
    assert [name for name, _ in model.encoder.named_parameters() if not name.startswith("backbone.")] == []
    pixel_values = torch.randn(2, 3, 32, 32)
    features = model.encoder.backbone_features(pixel_values)
    torch.testing.assert_close(model.encoder(pixel_values).last_hidden_state, features, atol=0, rtol=0)
    model.save_pretrained(tmp_path)
    loaded = CaptionerForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.feature_projection == "none"
    torch.testing.assert_close(
        loaded(pixel_values=pixel_values, labels=torch.ones(2, 3, dtype=torch.long)).logits,
        model(pixel_values=pixel_values, labels=torch.ones(2, 3, dtype=torch.long)).logits,
    )
    # With encoder layers the stack keeps its dropout and final LayerNorm (pre-LN layers need it), still unprojected.
    layered = CaptionerForConditionalGeneration(
        tiny_config("vit", "transformer", tokenizer, encoder_layers=1, feature_projection="none")
    )
    names = {name.split(".")[0] for name, _ in layered.encoder.bridge.named_parameters()}
    assert names == {"layers", "layer_norm"}


def test_feature_projection_errors_name_the_field(tokenizer):
    with pytest.raises(ValueError, match=r"feature_projection='none'.*32 wide and d_model=64"):
        tiny_config("resnet", "transformer", tokenizer, feature_projection="none", d_model=64)
    with pytest.raises(ValueError, match="feature_projection='conv' is unknown"):
        tiny_config("vit", "transformer", tokenizer, feature_projection="conv")
    assert CaptionerConfig().feature_projection == "linear"
