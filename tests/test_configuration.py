"""CaptionerConfig: presets, validation with sentences naming the field, serialisation."""

import pytest
import torch
from conftest import tiny_config

from modeling_captioner import CaptionerConfig, CaptionerForConditionalGeneration


def parameter_count(config: CaptionerConfig) -> int:
    with torch.device("meta"):
        model = CaptionerForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("encoder", ["resnet", "vit"])
@pytest.mark.parametrize("decoder", ["transformer", "gpt2"])
def test_tiny_preset_any_encoder_decoder(encoder, decoder, tokenizer):
    config = tiny_config(encoder, decoder, tokenizer)
    assert config.vision_config.model_type == encoder and config.decoder_type == decoder
    assert config.vocab_size == len(tokenizer)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 2, 3)
    assert 30_000 < parameter_count(config) < 1_000_000


def test_resnet101_transformer_preset_is_the_seed_system():
    config = CaptionerConfig.from_preset("resnet101-transformer")
    assert config.vision_config.model_type == "resnet"
    assert config.vision_config.depths == [3, 4, 23, 3] and config.vision_config.hidden_sizes[-1] == 2048
    assert config.vision_model_name_or_path == "microsoft/resnet-101"
    assert (config.encoder_layers, config.decoder_layers) == (3, 4)
    assert config.decoder_attention_heads == config.encoder_attention_heads == 8
    assert config.dropout == 0.1 and config.position_embedding_type == "learned"
    assert 40_000_000 < parameter_count(config) < 80_000_000


def test_vit_gpt2_preset_is_vit_base_and_gpt2_small():
    config = CaptionerConfig.from_preset("vit-gpt2")
    assert config.vision_config.hidden_size == 768 and config.vision_config.patch_size == 16
    assert config.text_config.n_layer == 12 and config.text_config.n_embd == 768
    assert config.text_config.add_cross_attention and config.d_model == 768
    assert config.vocab_size == 50257 and config.eos_token_id == config.decoder_start_token_id == 50256
    assert (config.vision_model_name_or_path, config.decoder_model_name_or_path) == (
        "google/vit-base-patch16-224-in21k",
        "gpt2",
    )
    # ViT-Base (86M) + GPT-2 small with cross-attention (~152M) + the bridge.
    assert 220_000_000 < parameter_count(config) < 260_000_000


def test_gpt2_text_config_follows_the_top_level_tokens(tokenizer):
    config = tiny_config("resnet", "gpt2", tokenizer)
    text = config.text_config
    assert (text.vocab_size, text.bos_token_id, text.eos_token_id, text.pad_token_id) == (len(tokenizer), 2, 3, 0)
    assert config.get_text_config(decoder=True) is text


def test_overrides_reach_the_config(tokenizer):
    config = tiny_config("resnet", "transformer", tokenizer, decoder_layers=3, position_embedding_type="none")
    assert config.decoder_layers == 3 and config.num_hidden_layers == 3
    assert config.position_embedding_type == "none"


def test_config_round_trip(tmp_path, tokenizer):
    config = tiny_config("vit", "gpt2", tokenizer, encoder_layers=2)
    config.save_pretrained(tmp_path)
    loaded = CaptionerConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.auto_map["AutoModel"] == "modeling_captioner.CaptionerForConditionalGeneration"
    assert loaded.auto_map["AutoModelForImageTextToText"] == "modeling_captioner.CaptionerForConditionalGeneration"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"decoder_attention_heads": 3},
            r"decoder_attention_heads=3 must be a positive integer that divides d_model=32",
        ),
        ({"encoder_attention_heads": 5}, r"encoder_attention_heads=5 .* divides d_model=32"),
        ({"eos_token_id": 5000}, r"eos_token_id=5000 is outside the vocabulary"),
        ({"pad_token_id": -1}, r"pad_token_id=-1 is outside the vocabulary"),
        ({"decoder_type": "rnn"}, r"decoder_type='rnn' is unknown"),
        ({"decoder_type": "lstm", "cell": "lstmx"}, r"cell='lstmx' is unknown"),
        ({"decoder_type": "lstm", "attention": "dot"}, r"attention='dot' is unknown"),
        ({"decoder_type": "lstm", "rnn_hidden_size": 0}, r"rnn_hidden_size must be a positive integer"),
        ({"position_embedding_type": "3d"}, r"position_embedding_type='3d' is unknown"),
        (
            {
                "position_embedding_type": "sinusoidal_2d",
                "d_model": 30,
                "decoder_attention_heads": 2,
                "encoder_attention_heads": 2,
            },
            r"d_model=30 must be a multiple of 4",
        ),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
        ({"d_model": 0}, r"d_model must be a positive integer"),
    ],
)
def test_inconsistent_configs_are_rejected_naming_the_field(overrides, message, tokenizer):
    with pytest.raises(ValueError, match=message):
        tiny_config("resnet", "transformer", tokenizer, **overrides)


def test_vit_image_size_must_match(tokenizer):
    with pytest.raises(ValueError, match=r"image_size=64 differs from vision_config.image_size=32"):
        tiny_config("vit", "transformer", tokenizer, image_size=64)


def test_unknown_preset_and_parts_are_rejected():
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        CaptionerConfig.from_preset("huge")
    with pytest.raises(ValueError, match="has no encoder 'swin'"):
        CaptionerConfig.from_preset("tiny", encoder="swin")
    with pytest.raises(ValueError, match="has no decoder 'rnn'"):
        CaptionerConfig.from_preset("tiny", decoder="rnn")


def test_model_rejects_a_config_edited_into_inconsistency(tokenizer):
    config = tiny_config("resnet", "transformer", tokenizer)
    config.decoder_attention_heads = 5
    with pytest.raises(ValueError, match="decoder_attention_heads=5"):
        CaptionerForConditionalGeneration(config)


def test_show_attend_tell_preset():
    config = CaptionerConfig.from_preset("show-attend-tell")
    assert config.decoder_type == "lstm" and config.cell == "lstm" and config.attention == "bahdanau"
    assert config.vision_config.depths == [3, 4, 23, 3]
    assert (config.embed_dim, config.rnn_hidden_size, config.decoder_layers) == (512, 512, 1)
    # The seed's sizes: embed 512, hidden 256, the 2048-d ResNet features unprojected in width.
    seed = CaptionerConfig.from_preset("show-attend-tell", rnn_hidden_size=256, d_model=2048)
    with torch.device("meta"):
        model = CaptionerForConditionalGeneration(seed)
    assert model.decoder.cells[0].hidden_size == 256 and model.decoder.cells[0].input_size == 512 + 2048
    assert model.encoder.bridge.projection.in_features == 2048 == model.encoder.bridge.projection.out_features


@pytest.mark.parametrize("encoder", ["resnet", "vit"])
def test_small_128_preset_is_small_at_twice_the_side(encoder):
    """train.py's default: `small`'s sizes with an 8×8 grid of image positions instead of 4×4."""
    small = CaptionerConfig.from_preset("small", encoder=encoder)
    config = CaptionerConfig.from_preset("small-128", encoder=encoder)
    assert config.image_size == 128 and small.image_size == 64
    assert (config.d_model, config.decoder_layers, config.encoder_layers) == (small.d_model, 2, 1)
    model = CaptionerForConditionalGeneration(config).eval()
    with torch.no_grad():
        positions = model.encoder(torch.zeros(1, 3, 128, 128)).last_hidden_state.shape[1]
    assert positions == (64 if encoder == "resnet" else 65)  # ViT keeps its CLS token
