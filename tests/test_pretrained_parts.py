"""from_encoder_decoder_pretrained on local folders saved from tiny random models (the hub ids work the same way)."""

import logging

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, ResNetConfig, ResNetModel, ViTConfig, ViTModel

from captioning.training.unfreezing import parameter_parts
from modeling_captioner import CaptionerForConditionalGeneration


@pytest.fixture(scope="module")
def pretrained_dirs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    ResNetModel(
        ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
    ).save_pretrained(root / "resnet")
    vit = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    ViTModel(vit).save_pretrained(root / "vit")
    gpt2 = GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=32, vocab_size=len(tokenizer), bos_token_id=2, eos_token_id=3
    )
    GPT2LMHeadModel(gpt2).save_pretrained(root / "gpt2")
    return root


def state(path, model_class):
    return model_class.from_pretrained(path).state_dict()


@pytest.mark.parametrize("encoder", ["resnet", "vit"])
def test_builds_from_pretrained_vision_model_and_gpt2(encoder, pretrained_dirs, tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        model, info = CaptionerForConditionalGeneration.from_encoder_decoder_pretrained(
            pretrained_dirs / encoder,
            pretrained_dirs / "gpt2",
            tokenizer=tokenizer,
            output_loading_info=True,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
        )
    assert model.config.decoder_type == "gpt2" and model.config.vision_config.model_type == encoder
    assert model.config.vision_model_name_or_path == str(pretrained_dirs / encoder)

    vision_class = {"resnet": ResNetModel, "vit": ViTModel}[encoder]
    reference = state(pretrained_dirs / encoder, vision_class)
    for name, tensor in model.encoder.backbone.state_dict().items():
        torch.testing.assert_close(tensor, reference[name], atol=0, rtol=0)
    # ViT's pooler is left out: no caption loss would reach it.
    assert not any(name.startswith("pooler.") for name in model.encoder.backbone.state_dict())
    expected_positions = "none" if encoder == "vit" else "learned"
    assert model.config.position_embedding_type == expected_positions
    gpt2_state = state(pretrained_dirs / "gpt2", GPT2LMHeadModel)
    for name, tensor in gpt2_state.items():
        torch.testing.assert_close(model.decoder.state_dict()[name], tensor, atol=0, rtol=0)

    new = info["new_weights"]
    assert "encoder.bridge.projection.weight" in new and "encoder.bridge.layers.0.self_attn.q_proj.weight" in new
    assert ("encoder.bridge.position_embeddings.weight" in new) == (encoder == "resnet")
    assert "decoder.transformer.h.0.crossattention.c_attn.weight" in new
    assert not any(name.startswith("encoder.backbone.") for name in new)
    assert not any(name == f"decoder.{k}" for k in gpt2_state for name in new)
    assert "need training" in caplog.text and "crossattention" in caplog.text
    # The unfreezing parts of a pretrained GPT-2 (tied lm_head, add_cross_attention) follow its modules.
    parts = parameter_parts(model)
    cross = {n for n in parts if ".crossattention." in n or ".ln_cross_attn." in n}
    assert {n for n, part in parts.items() if part == "cross_attention"} == cross
    assert {n for n, part in parts.items() if part == "bridge"} == {
        n for n in parts if n.startswith("encoder.bridge.")
    }
    assert {n for n, part in parts.items() if part == "encoder"} == {
        n for n in parts if n.startswith("encoder.backbone.")
    }

    inputs = torch.randn(2, 3, model.config.image_size, model.config.image_size)
    assert model.generate(inputs, max_new_tokens=4).shape[0] == 2


def test_vision_only_gives_the_transformer_decoder(pretrained_dirs, tokenizer):
    model = CaptionerForConditionalGeneration.from_encoder_decoder_pretrained(
        pretrained_dirs / "resnet",
        tokenizer=tokenizer,
        d_model=32,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        image_size=32,
    )
    assert model.config.decoder_type == "transformer" and model.config.vocab_size == len(tokenizer)
    assert model.generate(torch.randn(1, 3, 32, 32), max_new_tokens=3).shape[0] == 1


def test_decoder_must_be_gpt2(pretrained_dirs, tokenizer):
    with pytest.raises(ValueError, match="only GPT-2 decoders load pretrained"):
        CaptionerForConditionalGeneration.from_encoder_decoder_pretrained(
            pretrained_dirs / "resnet", pretrained_dirs / "vit", tokenizer=tokenizer
        )


def test_tokenizer_must_match_gpt2_vocabulary(pretrained_dirs, tokenizer, tmp_path):
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tokenizer) + 7)).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match=f"has vocab_size={len(tokenizer) + 7}"):
        CaptionerForConditionalGeneration.from_encoder_decoder_pretrained(
            pretrained_dirs / "resnet", tmp_path, tokenizer=tokenizer
        )
