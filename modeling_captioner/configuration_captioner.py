"""CaptionerConfig: one config for a vision encoder, the image-feature bridge and a caption decoder, plus named presets."""

from typing import Any, ClassVar

from transformers import AutoConfig, GPT2Config, PreTrainedConfig, ResNetConfig, ViTConfig
from transformers.configuration_utils import SubConfigSpec

DECODER_TYPES = ("transformer", "gpt2", "lstm")
AVAILABLE_DECODER_TYPES = DECODER_TYPES
POSITION_EMBEDDING_TYPES = ("learned", "sinusoidal_2d", "none")
FEATURE_PROJECTIONS = ("linear", "none")
RNN_CELLS = ("lstm", "gru", "rnn")
RNN_ATTENTIONS = ("bahdanau", "luong", "none")
# Fields that GPT-2's text config holds too (see CaptionerConfig.__getattribute__).
SHARED_WITH_TEXT_CONFIG = frozenset(
    ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "tie_word_embeddings")
)


def vision_feature_size(vision_config) -> int:
    """Channels of the backbone's last_hidden_state: the last stage width for CNNs, hidden_size for ViTs."""
    hidden_sizes = getattr(vision_config, "hidden_sizes", None)
    if hidden_sizes:
        return hidden_sizes[-1]
    hidden_size = getattr(vision_config, "hidden_size", None)
    if hidden_size:
        return hidden_size
    raise ValueError(
        f"Cannot tell the feature width of vision_config ({type(vision_config).__name__}): it has neither "
        "`hidden_sizes` nor `hidden_size`."
    )


class CaptionerConfig(PreTrainedConfig):
    r"""
    Configuration of a [`CaptionerForConditionalGeneration`]: a 🤗 vision backbone whose features are flattened into a
    sequence, given positions, projected to the decoder width and optionally refined by Transformer encoder layers,
    then read through cross-attention by a caption decoder.

    Args:
        vision_config (`PreTrainedConfig` or `dict`, *optional*):
            Config of any 🤗 vision model whose `AutoModel` returns `last_hidden_state`, either a grid
            `(batch, channels, h, w)` (ResNet, ConvNeXt) or tokens `(batch, positions, channels)` (ViT). Defaults to
            ResNet-50's config.
        text_config (`GPT2Config` or `dict`, *optional*):
            Config of the GPT-2 decoder; required when `decoder_type="gpt2"`, unused otherwise. Its width, vocabulary
            and special tokens are kept equal to this config's.
        decoder_type (`str`, *optional*, defaults to `"transformer"`):
            `"transformer"` (a from-scratch pre-LN Transformer decoder), `"gpt2"` (GPT2LMHeadModel with
            cross-attention) or `"lstm"` (Show, Attend and Tell: a recurrent decoder with soft attention).
        cell (`str`, *optional*, defaults to `"lstm"`):
            Recurrent cell of the `"lstm"` decoder: `"lstm"`, `"gru"` or `"rnn"` (tanh).
        attention (`str`, *optional*, defaults to `"bahdanau"`):
            Attention of the `"lstm"` decoder over image positions: `"bahdanau"` (additive), `"luong"`
            (multiplicative, "general" score) or `"none"` (the mean image feature at every step).
        embed_dim / rnn_hidden_size / attention_dim (`int`, *optional*, default to 512):
            Word embedding, recurrent state and attention widths of the `"lstm"` decoder.
        attention_regularization (`float`, *optional*, defaults to 1.0):
            λ of Show, Attend and Tell's doubly stochastic attention regularisation, added to the loss.
        image_size (`int`, *optional*, defaults to 224):
            Side of the square images the processor produces. For ViT it must equal `vision_config.image_size`.
        position_embedding_type (`str`, *optional*, defaults to `"learned"`):
            Positions added to the image features: `"learned"` (1-D learned), `"sinusoidal_2d"` (fixed 2-D sine/cosine
            over the feature grid) or `"none"`.
        max_image_positions (`int`, *optional*, defaults to 1024):
            Number of learned 1-D image positions (the feature sequence may not be longer).
        d_model (`int`, *optional*, defaults to 512):
            Width of the bridge and the decoder (for GPT-2: its `n_embd`).
        feature_projection (`str`, *optional*, defaults to `"linear"`):
            `"linear"`: the backbone's features are projected to `d_model` and layer-normalised (after any encoder
            layers). `"none"`: they reach the decoder as they are, as in VisionEncoderDecoderModel when the widths
            match (the backbone's width must equal `d_model`); dropout and the final LayerNorm are then kept only
            for encoder layers, so with `encoder_layers=0` and no positions the encoder is the backbone alone.
        encoder_layers (`int`, *optional*, defaults to 0):
            Transformer encoder layers applied to the projected image features.
        encoder_attention_heads / encoder_ffn_dim:
            Heads and feed-forward width of those layers.
        decoder_layers / decoder_attention_heads / decoder_ffn_dim:
            Depth, heads and feed-forward width of the Transformer decoder.
        max_position_embeddings (`int`, *optional*, defaults to 64):
            Longest caption (in tokens, start token included) the Transformer decoder can read.
        dropout / attention_dropout / activation_dropout (`float`):
            Dropout on residual branches, attention probabilities and inside the feed-forward block.
        activation_function (`str`, *optional*, defaults to `"gelu"`):
            Activation of the feed-forward blocks.
        vocab_size (`int`, *optional*, defaults to 15000):
            Size of the caption vocabulary; must equal `len(tokenizer)`.
        pad_token_id / bos_token_id / eos_token_id / decoder_start_token_id (`int`):
            Special tokens; generation starts from `decoder_start_token_id` and stops at `eos_token_id`.
        vision_model_name_or_path / decoder_model_name_or_path (`str`, *optional*):
            Where the pretrained backbone and decoder of this architecture come from (hub ids); informational, used by
            training scripts and the model card. Building from config never downloads anything.
    """

    model_type = "captioner"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="resnet"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="gpt2", optional=True),
    }
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "d_model",
        "num_hidden_layers": "decoder_layers",
        "num_attention_heads": "decoder_attention_heads",
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    decoder_type: str = "transformer"
    image_size: int = 224
    position_embedding_type: str = "learned"
    max_image_positions: int = 1024
    d_model: int = 512
    feature_projection: str = "linear"
    encoder_layers: int = 0
    encoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_layers: int = 4
    decoder_attention_heads: int = 8
    decoder_ffn_dim: int = 2048
    max_position_embeddings: int = 64
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation_function: str = "gelu"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    vocab_size: int = 15000
    pad_token_id: int | None = 0
    bos_token_id: int | None = 2
    eos_token_id: int | None = 3
    decoder_start_token_id: int | None = 2
    tie_word_embeddings: bool = True
    use_cache: bool = True
    is_encoder_decoder: bool = True
    vision_model_name_or_path: str | None = None
    decoder_model_name_or_path: str | None = None
    cell: str = "lstm"
    attention: str = "bahdanau"
    embed_dim: int = 512
    rnn_hidden_size: int = 512
    attention_dim: int = 512
    attention_regularization: float = 1.0

    def __post_init__(self, **kwargs):
        if self.decoder_type == "gpt2" and self.text_config is None:
            self.text_config = {"model_type": "gpt2"}
        super().__post_init__(**kwargs)
        if self.decoder_type == "gpt2":
            self._sync_text_config()
        # Both Auto classes point at the one model class, so AutoModel and AutoModelForImageTextToText load the same
        # thing from a saved folder with trust_remote_code=True.
        if getattr(self, "auto_map", None) is None:
            self.auto_map = {
                "AutoConfig": "configuration_captioner.CaptionerConfig",
                "AutoModel": "modeling_captioner.CaptionerForConditionalGeneration",
                "AutoModelForImageTextToText": "modeling_captioner.CaptionerForConditionalGeneration",
            }
        self.validate()

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        # With the from-scratch decoders this config is the decoder's own: attribute_map already names its layers and
        # heads as transformers reads them. transformers' fallback for flat encoder-decoder configs would deep-copy and
        # rename it on every call instead, and generate() and StaticCache call it several times per caption.
        if self.text_config is None and decoder and not encoder:
            return self
        return super().get_text_config(decoder=decoder, encoder=encoder)

    def _sync_text_config(self) -> None:
        """GPT-2's own config is the truth for its width and vocabulary; this config's special tokens and
        `tie_word_embeddings` are the truth for generation and saving, so they are written into GPT-2's config
        (generate(), GPT-2 and its weight tying read the decoder's text config). From here on the fields in
        `SHARED_WITH_TEXT_CONFIG` are one value: see `__getattribute__`."""
        text = self.text_config
        own = self.__dict__
        text.add_cross_attention = True
        text.is_decoder = True
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "tie_word_embeddings"):
            setattr(text, name, own[name])
        own["_shares_text_config"] = True
        self.d_model = text.hidden_size
        self.vocab_size = text.vocab_size
        self.decoder_layers = text.num_hidden_layers
        self.decoder_attention_heads = text.num_attention_heads
        self.max_position_embeddings = text.max_position_embeddings

    # With decoder_type="gpt2" these fields live in GPT-2's config as well as here, and transformers reads and writes
    # either copy: generate() and the stock model tests set tokens through `get_text_config(decoder=True)`,
    # `resize_token_embeddings` sets the text config's vocab_size, GPT-2 ties its lm_head by its own config. So they
    # are one value: this config's names read GPT-2's, and writes here reach GPT-2's too.
    def __getattribute__(self, key):
        if key in SHARED_WITH_TEXT_CONFIG:
            own = super().__getattribute__("__dict__")  # (torch.compile traces this form, not object.__getattribute__)
            if own.get("_shares_text_config"):
                return getattr(own["text_config"], key)
        return super().__getattribute__(key)

    def __setattr__(self, key, value):
        super().__setattr__(key, value)
        if key in SHARED_WITH_TEXT_CONFIG and self.__dict__.get("_shares_text_config"):
            setattr(self.text_config, key, value)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_shares_text_config", None)
        for name in SHARED_WITH_TEXT_CONFIG:
            output[name] = getattr(self, name)
        return output

    def validate(self) -> None:
        """Raise a `ValueError` naming the field when the config cannot build a working model."""
        if self.decoder_type not in DECODER_TYPES:
            raise ValueError(
                f"CaptionerConfig.decoder_type={self.decoder_type!r} is unknown; expected one of {DECODER_TYPES}."
            )
        if self.decoder_type == "lstm":
            if self.cell not in RNN_CELLS:
                raise ValueError(f"CaptionerConfig.cell={self.cell!r} is unknown; expected one of {RNN_CELLS}.")
            if self.attention not in RNN_ATTENTIONS:
                raise ValueError(
                    f"CaptionerConfig.attention={self.attention!r} is unknown; expected one of {RNN_ATTENTIONS}."
                )
            for name in ("embed_dim", "rnn_hidden_size", "attention_dim"):
                value = getattr(self, name)
                if not isinstance(value, int) or value <= 0:
                    raise ValueError(f"CaptionerConfig.{name} must be a positive integer, got {value!r}.")
            if self.attention_regularization < 0:
                raise ValueError(
                    f"CaptionerConfig.attention_regularization must be >= 0, got {self.attention_regularization!r}."
                )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"CaptionerConfig.position_embedding_type={self.position_embedding_type!r} is unknown; expected one "
                f"of {POSITION_EMBEDDING_TYPES}."
            )
        if self.vision_config is None:
            raise ValueError("CaptionerConfig.vision_config is required: the config of a 🤗 vision model.")
        if self.feature_projection not in FEATURE_PROJECTIONS:
            raise ValueError(
                f"CaptionerConfig.feature_projection={self.feature_projection!r} is unknown; expected one of "
                f"{FEATURE_PROJECTIONS}."
            )
        if self.feature_projection == "none" and vision_feature_size(self.vision_config) != self.d_model:
            raise ValueError(
                f"CaptionerConfig.feature_projection='none' passes the backbone's features on unprojected, but they "
                f"are {vision_feature_size(self.vision_config)} wide and d_model={self.d_model}; use "
                "feature_projection='linear' or a backbone of width d_model."
            )
        for name in ("d_model", "vocab_size", "image_size", "max_position_embeddings", "max_image_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"CaptionerConfig.{name} must be a positive integer, got {value!r}.")
        for name in ("encoder_layers", "decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"CaptionerConfig.{name} must be a non-negative integer, got {value!r}.")
        heads = {} if self.decoder_type == "lstm" else {"decoder_attention_heads": self.decoder_attention_heads}
        if self.encoder_layers:
            heads["encoder_attention_heads"] = self.encoder_attention_heads
        for name, value in heads.items():
            if not isinstance(value, int) or value <= 0 or self.d_model % value:
                raise ValueError(
                    f"CaptionerConfig.{name}={value!r} must be a positive integer that divides d_model={self.d_model}."
                )
        if self.position_embedding_type == "sinusoidal_2d" and self.d_model % 4:
            raise ValueError(
                f"CaptionerConfig.d_model={self.d_model} must be a multiple of 4 for position_embedding_type="
                "'sinusoidal_2d' (sine and cosine for rows and columns)."
            )
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"CaptionerConfig.{name} must be in [0, 1), got {value!r}.")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if value is None:
                if name in ("eos_token_id", "decoder_start_token_id"):
                    raise ValueError(f"CaptionerConfig.{name} is required for captioning, got None.")
                continue
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"CaptionerConfig.{name}={value!r} is outside the vocabulary (vocab_size={self.vocab_size}); "
                    "special-token ids must come from the tokenizer the model is trained with."
                )
        vision_type = getattr(self.vision_config, "model_type", None)
        vision_size = getattr(self.vision_config, "image_size", None)
        if vision_type == "vit" and vision_size != self.image_size:
            raise ValueError(
                f"CaptionerConfig.image_size={self.image_size} differs from vision_config.image_size={vision_size}; "
                "ViT's patch positions are fixed to its image size, so the two must be equal."
            )
        if self.decoder_type == "gpt2" and getattr(self.text_config, "model_type", None) != "gpt2":
            raise ValueError(
                "CaptionerConfig.text_config must be a GPT2Config when decoder_type='gpt2', got "
                f"{type(self.text_config).__name__}."
            )

    @classmethod
    def from_preset(
        cls, name: str, encoder: str | None = None, decoder: str | None = None, tokenizer: Any = None, **overrides
    ) -> "CaptionerConfig":
        """
        Build a complete config from a named preset (see `PRESETS`).

        Args:
            name (`str`): one of `"tiny"`, `"small"`, `"small-128"`, `"resnet101-transformer"`,
                `"show-attend-tell"`, `"vit-gpt2"`.
            encoder (`str`, *optional*): `"resnet"` or `"vit"`, to swap the preset's vision backbone for the same
                preset's other one (the tiny preset has tiny versions of both).
            decoder (`str`, *optional*): `"transformer"` or `"gpt2"`, likewise.
            tokenizer (*optional*): a tokenizer whose size and special tokens the config takes.
            overrides: any other CaptionerConfig field.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; available presets: {sorted(PRESETS)}.")
        preset = PRESETS[name]
        encoder = encoder or preset["encoder"]
        decoder = decoder or preset["decoder"]
        if encoder not in preset["vision"]:
            raise ValueError(f"Preset {name!r} has no encoder {encoder!r}; choose from {sorted(preset['vision'])}.")
        if decoder not in AVAILABLE_DECODER_TYPES:
            raise ValueError(f"Preset {name!r} has no decoder {decoder!r}; choose from {AVAILABLE_DECODER_TYPES}.")
        vision_config, vision_source = preset["vision"][encoder]()
        kwargs = dict(preset["fields"])
        kwargs.update(decoder_type=decoder, vision_config=vision_config, vision_model_name_or_path=vision_source)
        if encoder == "vit":
            kwargs["image_size"] = vision_config.image_size
            # ViT adds its own patch positions; a second, learned set over the same tokens only slows training.
            kwargs["position_embedding_type"] = "none"
        if tokenizer is not None:
            kwargs.update(special_tokens_from_tokenizer(tokenizer))
        if decoder == "lstm":
            kwargs.update(preset.get("lstm", {}))
        if decoder == "gpt2":
            gpt2_fields = dict(preset["gpt2"])
            kwargs["decoder_model_name_or_path"] = gpt2_fields.pop("source", None)
            if tokenizer is None:
                kwargs.update(preset.get("gpt2_tokens", {}))
            for field in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id"):
                gpt2_fields[field] = overrides.get(field, kwargs.get(field, getattr(cls, field)))
            gpt2_fields.update(overrides.pop("text_config", None) or {})
            kwargs["text_config"] = GPT2Config(add_cross_attention=True, **gpt2_fields)
        kwargs.update(overrides)
        return cls(**kwargs)


def special_tokens_from_tokenizer(tokenizer: Any) -> dict[str, int]:
    """Vocabulary size and special-token ids of a tokenizer, under CaptionerConfig's field names. A tokenizer with
    no BOS (or CLS) token starts captions from EOS, as GPT-2 does."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError(
            f"The tokenizer {type(tokenizer).__name__} has neither an EOS nor a SEP token to end captions."
        )
    bos = eos if bos is None else bos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": pad,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "decoder_start_token_id": bos,
    }


def _tiny_resnet():
    return ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"), None


def _tiny_vit():
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return config, None


def _small_resnet():
    return ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], layer_type="basic"), None


def _small_vit(image_size: int = 64, patch_size: int = 8):
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
    )
    return config, None


def _small_vit_128():
    return _small_vit(image_size=128, patch_size=16)  # 8×8 patches, as `small` has at 64×64


def _resnet101():
    # microsoft/resnet-101's architecture; weights come from the hub only through from_encoder_decoder_pretrained.
    config = ResNetConfig(
        embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 23, 3], layer_type="bottleneck"
    )
    return config, "microsoft/resnet-101"


def _vit_base():
    return ViTConfig(image_size=224, patch_size=16, hidden_size=768), "google/vit-base-patch16-224-in21k"


# GPT-2 has one special token (50256): it starts, ends and pads captions.
GPT2_TOKENS = {
    "vocab_size": 50257,
    "pad_token_id": 50256,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
    "decoder_start_token_id": 50256,
}

PRESETS: dict[str, dict[str, Any]] = {
    # A few hundred thousand parameters: for tests, the README and CPU experiments.
    "tiny": {
        "encoder": "resnet",
        "decoder": "transformer",
        "vision": {"resnet": _tiny_resnet, "vit": _tiny_vit},
        "fields": {
            "image_size": 32,
            "d_model": 32,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "decoder_layers": 2,
            "decoder_attention_heads": 2,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": 32,
            "max_image_positions": 64,
            "vocab_size": 1000,
            "dropout": 0.0,
        },
        "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 32, "vocab_size": 1000},
        "lstm": {"embed_dim": 64, "rnn_hidden_size": 64, "attention_dim": 32, "decoder_layers": 1},
    },
    # About a million parameters on 64×64 images: learns the built-in easy synthetic set on a 2-core CPU in minutes.
    "small": {
        "encoder": "resnet",
        "decoder": "transformer",
        "vision": {"resnet": _small_resnet, "vit": _small_vit},
        "fields": {
            "image_size": 64,
            "d_model": 128,
            "encoder_layers": 1,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 256,
            "decoder_layers": 2,
            "decoder_attention_heads": 4,
            "decoder_ffn_dim": 256,
            "max_position_embeddings": 40,
            "max_image_positions": 128,
            "vocab_size": 1000,
            "dropout": 0.1,
        },
        "gpt2": {"n_embd": 128, "n_layer": 2, "n_head": 4, "n_positions": 40, "vocab_size": 1000},
        "lstm": {"embed_dim": 128, "rnn_hidden_size": 256, "attention_dim": 128, "decoder_layers": 1},
    },
    # The seed system: ResNet-101 grid features, 1-D learned positions, 3 encoder + 4 decoder layers, 8 heads.
    "resnet101-transformer": {
        "encoder": "resnet",
        "decoder": "transformer",
        "vision": {"resnet": _resnet101, "vit": _vit_base},
        "fields": {
            "d_model": 512,
            "encoder_layers": 3,
            "encoder_attention_heads": 8,
            "encoder_ffn_dim": 2048,
            "decoder_layers": 4,
            "decoder_attention_heads": 8,
            "decoder_ffn_dim": 2048,
            "dropout": 0.1,
            "vocab_size": 15000,
        },
        "gpt2": {"source": "gpt2"},
        "gpt2_tokens": GPT2_TOKENS,
    },
    # Show, Attend and Tell: ResNet-101 grid features read by an LSTM with soft (Bahdanau) attention. The seed used
    # embed 512 / hidden 256 / 2048-d features: rnn_hidden_size=256, d_model=2048.
    "show-attend-tell": {
        "encoder": "resnet",
        "decoder": "lstm",
        "vision": {"resnet": _resnet101, "vit": _vit_base},
        "fields": {
            "d_model": 512,
            "position_embedding_type": "none",
            "embed_dim": 512,
            "rnn_hidden_size": 512,
            "attention_dim": 512,
            "decoder_layers": 1,
            "dropout": 0.5,
            "vocab_size": 15000,
        },
    },
    # ViT-Base + GPT-2 small joined by cross-attention (the vit-gpt2 recipe), GPT-2's own vocabulary.
    "vit-gpt2": {
        "encoder": "vit",
        "decoder": "gpt2",
        "vision": {"vit": _vit_base, "resnet": _resnet101},
        "fields": {"vocab_size": 50257, "max_position_embeddings": 1024},
        "gpt2": {"source": "gpt2"},
        "gpt2_tokens": GPT2_TOKENS,
    },
}

# `small` at 128×128: an 8×8 grid (ResNet) or 8×8 patches (ViT) instead of 4×4, for scenes with several small objects
# whose counts and places captions state (the hard synthetic set); a 64×64 input leaves a small object a few pixels
# across and a 4×4 grid cannot tell five objects apart. train.py's default, and configs/synthetic-hard.yaml's.
PRESETS["small-128"] = {
    **PRESETS["small"],
    "vision": {"resnet": _small_resnet, "vit": _small_vit_128},
    "fields": {**PRESETS["small"]["fields"], "image_size": 128},
}

__all__ = ["PRESETS", "CaptionerConfig", "special_tokens_from_tokenizer", "vision_feature_size"]
