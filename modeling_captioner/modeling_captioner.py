"""Captioner model: a 🤗 vision backbone, a bridge from its features to a sequence, and a caption decoder (a
from-scratch Transformer or GPT-2 with cross-attention) behind transformers' generate()."""

import contextlib
import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, GenerationMixin, GPT2LMHeadModel, PreTrainedModel
from transformers.activations import ACT2FN, GELUTanh, NewGELUActivation
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache, StaticLayer
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.masking_utils import create_causal_mask, create_masks_for_generate
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithCrossAttentions, Seq2SeqLMOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward as gpt2_eager_attention_forward
from transformers.utils import is_torchdynamo_compiling, logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_captioner import CaptionerConfig, special_tokens_from_tokenizer, vision_feature_size

logger = logging.get_logger(__name__)


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher-forcing inputs from labels, as VisionEncoderDecoderModel builds them: start token first, every label
    one step later, ignored (-100) positions read as padding."""
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1].clone()
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


def vision_model_kwargs(vision_config) -> dict:
    """Check that `vision_config` builds a vision model (one that reads pixel_values) and return the keyword arguments
    for building it: a pooling head after the backbone would hold parameters no caption loss reaches, so it is left
    out where the model class allows it (ViTModel and similar)."""
    model_class = AutoModel._model_mapping.get(type(vision_config), None)  # coupling 9, in COUPLINGS below
    if model_class is None or getattr(model_class, "main_input_name", None) != "pixel_values":
        raise ValueError(
            f"vision_config is a {type(vision_config).__name__}, which does not build a vision model reading "
            "pixel_values; use the config of a 🤗 vision model (ResNet, ViT, ConvNeXt, ...)."
        )
    kwargs = {}
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    fallback = attention_fallback(model_class, getattr(vision_config, "_attn_implementation", None))
    if fallback is not None:
        kwargs["attn_implementation"] = fallback
    return kwargs


def attention_fallback(model_class: type, requested: str | None) -> str | None:
    """The captioner's `attn_implementation` reaches its 🤗 sub-models (backbone, GPT-2) through their configs. One
    that cannot run it (a ResNet has no attention at all; GPT-2 has no flex attention) gets the best it has instead;
    None where it can run the request."""
    if requested in (None, "eager"):
        return None
    flags = {
        "sdpa": "_supports_sdpa",
        "flash_attention_2": "_supports_flash_attn",
        "flash_attention_3": "_supports_flash_attn",
        "flex_attention": "_supports_flex_attn",
    }
    if getattr(model_class, flags.get(requested, "_supports_attention_backend"), False):
        return None
    fallback = "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"
    if fallback != "eager" or getattr(model_class, "_supports_attention_backend", False):
        logger.info(
            f"{model_class.__name__} cannot use attn_implementation={requested!r}; its attention uses {fallback}."
        )
    return fallback


def sinusoidal_2d_positions(height: int, width: int, dim: int, device, dtype) -> torch.Tensor:
    """Fixed 2-D sine/cosine positions (MAE, DETR): half of the channels encode the row, half the column."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    angles_y = rows.reshape(-1, 1) * omega  # (h*w, dim/4)
    angles_x = cols.reshape(-1, 1) * omega
    positions = torch.cat([angles_y.sin(), angles_y.cos(), angles_x.sin(), angles_x.cos()], dim=1)
    return positions.to(dtype)  # (h*w, dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, returning its weights (attention maps); the reference the registry's kernels equal.
    `attention_mask` is boolean (True = may attend) or additive, as transformers' mask builders return it for eager;
    returns (B, T, H, D) outputs like every function in `ALL_ATTENTION_FUNCTIONS`."""
    query_length, key_length = query.shape[2], key.shape[2]
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, T, S)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    if attention_mask is None and is_causal and query_length > 1:
        attention_mask = torch.ones(query_length, key_length, dtype=torch.bool, device=query.device).tril(
            key_length - query_length
        )
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    attn_weights = scores.float().softmax(dim=-1).to(query.dtype)
    attn_output = torch.matmul(F.dropout(attn_weights, p=dropout, training=module.training), value)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


def caption_groups(query_batch: int, image_batch: int) -> int:
    """How many caption rows read each image: generate() keeps one copy of each image's features (and of its
    cross-attention keys and values) for all its beams or samples, which sit next to each other (rows i·g … i·g+g-1
    read image i), so the decoder batch is a whole multiple of the image batch."""
    if query_batch % image_batch:
        raise ValueError(
            f"The decoder has {query_batch} caption rows for {image_batch} images; each image needs the same whole "
            "number of captions (rows i·g … i·g+g-1 read image i)."
        )
    return query_batch // image_batch


def fold_captions(query: torch.Tensor, groups: int) -> torch.Tensor:
    """(B·g, H, T, D) → (B, H, g·T, D): the queries of an image's g captions side by side, so that cross-attention
    reads each image's keys and values once instead of once per caption (cross-attention has no mask between them)."""
    rows, heads, length, dim = query.shape
    return (
        query.view(rows // groups, groups, heads, length, dim).transpose(1, 2).reshape(-1, heads, groups * length, dim)
    )


def unfold_captions(states: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, H, g·T, X) → (B·g, H, T, X): the inverse of `fold_captions` (attention outputs or weights)."""
    images, heads, length, dim = states.shape
    return (
        states.view(images, heads, groups, length // groups, dim)
        .transpose(1, 2)
        .reshape(-1, heads, length // groups, dim)
    )


def step_cache(cache: Cache | None, use_cache: bool) -> EncoderDecoderCache | None:
    """The cache a decoder call reads and extends: none without use_cache, a fresh one when the caller has none.

    Layout, deliberately unlike transformers' encoder-decoder models: the self-attention part has one row per caption
    (B·g rows: every beam or sample), the cross-attention part one row per *image* (B rows), because all g captions of
    an image read the same keys and values (`caption_groups`, `fold_captions`). Beam search therefore reorders only
    the self-attention part (`_reorder_cache`). The LSTM decoder keeps its recurrent state in the self-attention part
    (keys=h, values=c, one row per caption) and the projected image features in the cross-attention part (a row per
    caption there: its state is per caption from the first step)."""
    if not use_cache:
        return None
    return cache if cache is not None else EncoderDecoderCache(DynamicCache(), DynamicCache())


class CaptionerAttention(nn.Module):
    """Multi-head attention over the decoder's own tokens (causal), the image features (cross-attention) or, in the
    encoder, the image features themselves. Keys and values live in an EncoderDecoderCache during generation."""

    def __init__(self, config: CaptionerConfig, num_heads: int, is_causal: bool, layer_idx: int | None = None):
        super().__init__()
        self.config = config
        self.embed_dim = config.d_model
        self.num_heads = num_heads
        self.head_dim = self.embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        # SDPA treats a module without this attribute as causal, so every instance states it.
        self.is_causal = is_causal
        self.layer_idx = layer_idx
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        batch_size, length, _ = states.shape
        return states.view(batch_size, length, self.num_heads, self.head_dim).transpose(
            1, 2
        )  # (B, L, C) -> (B, H, L, D)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        is_cross_attention = key_value_states is not None
        query = self._split_heads(self.q_proj(hidden_states))
        if is_cross_attention and cache is not None and cache.is_updated.get(self.layer_idx):
            # The image does not change while a caption grows: its keys and values are projected once per image.
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            key, value = layer.keys, layer.values
        else:
            source = key_value_states if is_cross_attention else hidden_states
            key = self._split_heads(self.k_proj(source))
            value = self._split_heads(self.v_proj(source))
            if cache is not None and is_cross_attention:
                # One row per image, not per beam or sample (the layout: `step_cache`). Contiguous once here, rather
                # than copied by the attention kernel at every generation step.
                key, value = cache.cross_attention_cache.update(key.contiguous(), value.contiguous(), self.layer_idx)
                cache.is_updated[self.layer_idx] = True
            elif cache is not None:
                key, value = cache.self_attention_cache.update(key, value, self.layer_idx)

        batch_size = query.shape[0]
        groups = caption_groups(batch_size, key.shape[0]) if is_cross_attention else 1
        if groups > 1:
            query = fold_captions(query, groups)
        attention = eager_attention_forward
        # A compiled one-token step on a CPU keeps sdpa written out: a single query's attention is two small
        # matrix-vector products and a softmax that inductor fuses with the ops around them, where SDPA's CPU kernel
        # is an opaque call with its own start-up cost.
        one_query_on_cpu = query.shape[2] == 1 and query.device.type == "cpu" and is_torchdynamo_compiling()
        implementation = self.config._attn_implementation
        if not output_attentions and implementation != "eager" and not (implementation == "sdpa" and one_query_on_cpu):
            # sdpa, flash_attention_2, flex_attention, or a kernel registered by the user.
            attention = ALL_ATTENTION_FUNCTIONS[implementation]
        attn_output, attn_weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=self.is_causal and attention_mask is None and query.shape[2] > 1,
        )
        if groups > 1:
            attn_output = unfold_captions(attn_output.transpose(1, 2), groups).transpose(1, 2)
            attn_weights = unfold_captions(attn_weights, groups) if attn_weights is not None else None
        attn_output = attn_output.reshape(batch_size, -1, self.embed_dim)  # (B, T, H, D) -> (B, T, C)
        return self.out_proj(attn_output), attn_weights


class CaptionerMLP(nn.Module):
    def __init__(self, config: CaptionerConfig, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, intermediate_size)
        self.act = ACT2FN[config.activation_function]
        self.dropout = nn.Dropout(config.activation_dropout)
        self.fc2 = nn.Linear(intermediate_size, config.d_model)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(hidden_states))))


class CaptionerEncoderLayer(GradientCheckpointingLayer):
    """Pre-LN Transformer encoder layer over the projected image features."""

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.self_attn = CaptionerAttention(config, config.encoder_attention_heads, is_causal=False)
        self.final_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = CaptionerMLP(config, config.encoder_ffn_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        attn_output, attn_weights = self.self_attn(
            self.self_attn_layer_norm(hidden_states), output_attentions=output_attentions
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        hidden_states = hidden_states + self.dropout(self.mlp(self.final_layer_norm(hidden_states)))
        return hidden_states, attn_weights


class CaptionerDecoderLayer(GradientCheckpointingLayer):
    """Pre-LN Transformer decoder layer: causal self-attention, cross-attention to the image, MLP."""

    def __init__(self, config: CaptionerConfig, layer_idx: int):
        super().__init__()
        heads = config.decoder_attention_heads
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.self_attn = CaptionerAttention(config, heads, is_causal=True, layer_idx=layer_idx)
        self.cross_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.cross_attn = CaptionerAttention(config, heads, is_causal=False, layer_idx=layer_idx)
        self.final_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = CaptionerMLP(config, config.decoder_ffn_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
    ):
        attn_output, self_attn_weights = self.self_attn(
            self.self_attn_layer_norm(hidden_states),
            attention_mask=attention_mask,
            cache=cache,
            output_attentions=output_attentions,
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        attn_output, cross_attn_weights = self.cross_attn(
            self.cross_attn_layer_norm(hidden_states),
            key_value_states=encoder_hidden_states,
            cache=cache,
            output_attentions=output_attentions,
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        hidden_states = hidden_states + self.dropout(self.mlp(self.final_layer_norm(hidden_states)))
        return hidden_states, self_attn_weights, cross_attn_weights


class CaptionerBridge(nn.Module):
    """Backbone features → feature sequence → projection to d_model → positions → optional encoder layers → LayerNorm
    (with `feature_projection="none"`: no projection, and dropout and LayerNorm only around encoder layers).

    The new part between a (pretrained) backbone and the decoder: the unfreezing schedule's "bridge". It reads the
    backbone's `last_hidden_state`, a grid `(batch_size, channels, height, width)` or tokens `(batch_size,
    num_tokens, channels)`, so a feature cache can feed it without the backbone.
    """

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        self.config = config
        # feature_projection="none" with no encoder layers keeps nothing but positions (if any): the decoder reads
        # the backbone's own (already normalised) features, as VisionEncoderDecoderModel does at equal widths.
        linear = config.feature_projection == "linear"
        stack = linear or config.encoder_layers > 0
        vision_config = config.vision_config
        self.projection = nn.Linear(vision_feature_size(vision_config), config.d_model) if linear else nn.Identity()
        if config.position_embedding_type == "learned":
            self.position_embeddings = nn.Embedding(config.max_image_positions, config.d_model)
        self.dropout = nn.Dropout(config.dropout) if stack else nn.Identity()
        self.layers = nn.ModuleList([CaptionerEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if stack else nn.Identity()

    def _grid_shape(self, num_positions: int) -> tuple[int, int, int]:
        """(prefix tokens, rows, cols) of a ViT-style token sequence: CLS-like tokens first, then the patch grid."""
        vision_config = self.config.vision_config
        patch_size = getattr(vision_config, "patch_size", None)
        image_size = getattr(vision_config, "image_size", None)
        if isinstance(patch_size, int) and isinstance(image_size, int):
            side = image_size // patch_size
            if 0 <= num_positions - side * side <= 8:
                return num_positions - side * side, side, side
        raise ValueError(
            f"position_embedding_type='sinusoidal_2d' needs a patch grid, but {num_positions} vision tokens do not "
            f"match image_size={image_size} / patch_size={patch_size}."
        )

    def _positions(self, features: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor | None:
        num_positions = features.shape[1]
        kind = self.config.position_embedding_type
        if kind == "learned":
            if num_positions > self.config.max_image_positions:
                raise ValueError(
                    f"The backbone gives {num_positions} image positions but max_image_positions="
                    f"{self.config.max_image_positions}; raise it in the config or use smaller images."
                )
            return self.position_embeddings.weight[:num_positions]
        if kind == "sinusoidal_2d":
            prefix, rows, cols = (0, *grid) if grid is not None else self._grid_shape(num_positions)
            grid_positions = sinusoidal_2d_positions(rows, cols, self.config.d_model, features.device, features.dtype)
            return F.pad(grid_positions, (0, 0, prefix, 0))  # prefix (CLS) tokens get no position
        return None

    def forward(
        self,
        features: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutput:
        grid = None
        if features.ndim == 4:
            grid = features.shape[2], features.shape[3]
            features = features.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)
        hidden_states = self.projection(features)
        positions = self._positions(hidden_states, grid)
        if positions is not None:
            hidden_states = hidden_states + positions
        hidden_states = self.dropout(hidden_states)

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, attn_weights = layer(hidden_states, output_attentions=bool(output_attentions))
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        hidden_states = self.layer_norm(hidden_states)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


class CaptionerImageEncoder(nn.Module):
    """The vision `backbone` (a 🤗 vision model) and the `bridge` (`CaptionerBridge`) from its features to d_model.

    Returns `BaseModelOutput(last_hidden_state)` of shape `(batch_size, num_positions, d_model)`: the memory the
    decoder cross-attends to (and the object generate() finds as `model.encoder`).
    """

    main_input_name = "pixel_values"

    def __init__(self, config: CaptionerConfig, backbone: PreTrainedModel | None = None):
        super().__init__()
        self.config = config
        vision_config = config.vision_config
        self.backbone = backbone or AutoModel.from_config(vision_config, **vision_model_kwargs(vision_config))
        self.bridge = CaptionerBridge(config)

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        channels = getattr(self.config.vision_config, "num_channels", 3)
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
            shape = (
                tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            )
            raise ValueError(
                f"pixel_values must be a float tensor of shape (batch_size, {channels}, height, width); got {shape}. "
                "Use the model's processor to turn images into pixel_values."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a float tensor (normalised images), got dtype {pixel_values.dtype}."
            )
        image_size = getattr(self.config.vision_config, "image_size", None)
        if self.config.vision_config.model_type == "vit" and tuple(pixel_values.shape[2:]) != (image_size, image_size):
            raise ValueError(
                f"pixel_values of size {tuple(pixel_values.shape[2:])} do not match this ViT's image size "
                f"({image_size}, {image_size})."
            )

    def backbone_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The backbone's last_hidden_state: what a feature cache stores while the backbone is frozen."""
        self.check_pixel_values(pixel_values)
        # Processors return float32 images; a model cast with `.to(dtype)` or loaded with `dtype=` reads them in its
        # own dtype, as 🤗 ViT and CLIP cast theirs (a ResNet would fail on the mismatch).
        weight = next(self.backbone.parameters(), None)
        if weight is not None:
            pixel_values = pixel_values.to(weight.dtype)
        return self.backbone(pixel_values=pixel_values, return_dict=True).last_hidden_state

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        vision_features: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        if vision_features is not None:
            features = vision_features
        elif pixel_values is not None:
            features = self.backbone_features(pixel_values)
        else:
            raise ValueError("The image encoder needs pixel_values (or precomputed vision_features).")
        return self.bridge(features, output_attentions=output_attentions, output_hidden_states=output_hidden_states)


class CaptionerTransformerDecoder(nn.Module):
    """From-scratch pre-LN Transformer decoder with learned positions and an output layer tied to its embeddings."""

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([CaptionerDecoderLayer(config, i) for i in range(config.decoder_layers)])
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithCrossAttentions:
        cache = step_cache(cache, use_cache)
        query_length = input_ids.shape[1]
        # A tensor with a static cache (its fill level), so that the compiled decoding step is one graph for all steps.
        past_length = cache.get_seq_length() if cache is not None else 0
        if not is_torchdynamo_compiling() and past_length + query_length > self.config.max_position_embeddings:
            raise ValueError(
                f"A caption of {past_length + query_length} tokens is longer than the decoder's "
                f"max_position_embeddings={self.config.max_position_embeddings}; truncate captions or lower "
                "max_new_tokens."
            )
        positions = torch.arange(query_length, device=input_ids.device) + past_length
        inputs_embeds = self.embed_tokens(input_ids)
        hidden_states = self.dropout(inputs_embeds + self.embed_positions(positions))
        # The mask each attention implementation wants (None where SDPA's is_causal is exact, a BlockMask for flex,
        # padding for flash), over the static cache's whole length where there is one.
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=positions[None],
        )

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_self_attentions = () if output_attentions else None
        all_cross_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, self_attn_weights, cross_attn_weights = layer(
                hidden_states,
                encoder_hidden_states,
                attention_mask=mask,
                cache=cache,
                output_attentions=output_attentions,
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_self_attentions += (self_attn_weights,)
                all_cross_attentions += (cross_attn_weights,)
        hidden_states = self.layer_norm(hidden_states)
        return CausalLMOutputWithCrossAttentions(
            logits=self.lm_head(hidden_states),
            cache=cache,
            hidden_states=all_hidden_states,
            attentions=all_self_attentions,
            cross_attentions=all_cross_attentions,
        )


class CaptionerRNNAttention(nn.Module):
    """Soft attention of Show, Attend and Tell (Xu et al., 2015, §3.1.2) over the image positions, scored from the
    recurrent state before the step: additive (Bahdanau et al., 2015), multiplicative "general" (Luong et al.,
    2015), or none (the mean feature). The image side of the score is projected once per image (`project`)."""

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        self.kind = config.attention
        if self.kind == "bahdanau":
            self.feature_proj = nn.Linear(config.d_model, config.attention_dim)
            self.state_proj = nn.Linear(config.rnn_hidden_size, config.attention_dim)
            self.score = nn.Linear(config.attention_dim, 1)
        elif self.kind == "luong":
            self.feature_proj = nn.Linear(config.d_model, config.rnn_hidden_size, bias=False)
        # Show, Attend and Tell §4.2.1: a gating scalar β = σ(f_β(h)) scales the context at each step.
        self.gate = nn.Linear(config.rnn_hidden_size, 1)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return features.mean(dim=1, keepdim=True)  # (B, N, D) -> (B, 1, D)
        return self.feature_proj(features)  # (B, N, D) -> (B, N, A)

    def forward(
        self, state: torch.Tensor, keys: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.kind == "none":
            context, weights = keys[:, 0], None
        else:
            if self.kind == "bahdanau":
                scores = self.score(torch.tanh(keys + self.state_proj(state)[:, None])).squeeze(-1)  # (B, N)
            else:
                scores = torch.bmm(keys, state.unsqueeze(-1)).squeeze(-1)  # (B, N, H) @ (B, H, 1) -> (B, N)
            weights = scores.float().softmax(dim=-1).to(features.dtype)
            context = torch.bmm(weights.unsqueeze(1), features).squeeze(1)  # (B, 1, N) @ (B, N, D) -> (B, D)
        return torch.sigmoid(self.gate(state)) * context, weights


class CaptionerLSTMDecoder(nn.Module):
    """Show, Attend and Tell's decoder: each step feeds the word embedding with the gated attention context to the
    recurrent cell(s), whose state starts from the mean image feature; dropout precedes the output layer.

    During generation the recurrent state of every step is appended to the self-attention cache as
    (keys=h, values=c), so beam search reorders it with the cache; the projected image features sit in the
    cross-attention cache, computed once per image."""

    gradient_checkpointing = False  # set by `model.gradient_checkpointing_enable()`

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        self.config = config
        hidden = config.rnn_hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=config.pad_token_id)
        self.attention = CaptionerRNNAttention(config)
        # Show, Attend and Tell §3.1.2: initial memory and state predicted from the mean annotation vector.
        self.init_h = nn.ModuleList([nn.Linear(config.d_model, hidden) for _ in range(config.decoder_layers)])
        if config.cell == "lstm":  # GRU and tanh-RNN cells have no memory cell
            self.init_c = nn.ModuleList([nn.Linear(config.d_model, hidden) for _ in range(config.decoder_layers)])
        cell_class = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}[config.cell]
        inputs = [config.embed_dim + config.d_model] + [hidden] * (config.decoder_layers - 1)
        self.cells = nn.ModuleList([cell_class(size, hidden) for size in inputs])
        self.dropout = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(hidden, config.vocab_size)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _step(self, embeds: torch.Tensor, keys: torch.Tensor, features: torch.Tensor, *state: torch.Tensor):
        """One word: attention from the top layer's state, then the cells. `state` is h0, c0, h1, c1, … (flat, so that
        a checkpoint sees tensors); returns the attention weights and the new state, flat the same way."""
        context, weights = self.attention(state[-2], keys, features)
        layer_input = torch.cat([embeds, context], dim=-1)
        new_state = []
        for cell, h, c in zip(self.cells, state[::2], state[1::2], strict=True):
            h, c = cell(layer_input, (h, c)) if self.config.cell == "lstm" else (cell(layer_input, h),) * 2
            new_state += [h, c]
            layer_input = h
        return weights, *new_state

    def _initial_state(self, features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        mean = features.mean(dim=1)
        hidden = [torch.tanh(h(mean)) for h in self.init_h]
        if self.config.cell != "lstm":
            return [(h, h) for h in hidden]
        return [(h, torch.tanh(c(mean))) for h, c in zip(hidden, self.init_c, strict=True)]

    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithCrossAttentions:
        cache = step_cache(cache, use_cache)
        features = encoder_hidden_states
        if cache is not None and cache.is_updated.get(0):
            keys = cache.cross_attention_cache.layers[0].keys[:, 0]
        else:
            keys = self.attention.project(features)
            if cache is not None:
                cache.cross_attention_cache.update(keys[:, None], features[:, None], 0)  # (B, N, A) -> (B, 1, N, A)
                cache.is_updated[0] = True

        past_length = cache.get_seq_length() if cache is not None else 0
        if cache is not None and past_length > 0:
            # The last state written: at the end of a dynamic layer, at the fill level of a static one.
            layers = cache.self_attention_cache.layers
            last = past_length - 1
            state = [(layers[i].keys[:, 0, last], layers[i].values[:, 0, last]) for i in range(len(self.cells))]
        else:
            state = self._initial_state(features)
        # Under gradient checkpointing each step keeps only its inputs and recomputes its cells in the backward pass.
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        outputs, maps = [], []
        for step in range(input_ids.shape[1]):
            flat_state = [tensor for pair in state for tensor in pair]
            step_inputs = (self.embed_tokens(input_ids[:, step]), keys, features, *flat_state)
            if checkpointing:
                weights, *flat_state = self._gradient_checkpointing_func(self._step, *step_inputs)
            else:
                weights, *flat_state = self._step(*step_inputs)
            state = list(zip(flat_state[::2], flat_state[1::2], strict=True))
            outputs.append(state[-1][0])
            maps.append(weights)
            if cache is not None:
                for i, (h, c) in enumerate(state):
                    cache.self_attention_cache.update(h[:, None, None], c[:, None, None], i)  # (B, H) -> (B, 1, 1, H)
        hidden_states = torch.stack(outputs, dim=1)  # T × (B, H) -> (B, T, H)
        cross_attentions = None
        if output_attentions and maps[0] is not None:
            cross_attentions = (torch.stack(maps, dim=1)[:, None],)  # T × (B, N) -> (B, 1, T, N): one "head"
        return CausalLMOutputWithCrossAttentions(
            logits=self.lm_head(self.dropout(hidden_states)),
            cache=cache,
            hidden_states=(hidden_states,) if output_hidden_states else None,
            cross_attentions=cross_attentions,
        )


def build_gpt2_decoder(config: CaptionerConfig) -> GPT2LMHeadModel:
    fallback = attention_fallback(GPT2LMHeadModel, config.text_config._attn_implementation)
    if fallback is not None:
        config.text_config._attn_implementation = fallback
    return GPT2LMHeadModel(config.text_config)


# Config choice → decoder.
DECODER_CLASSES = {
    "transformer": CaptionerTransformerDecoder,
    "gpt2": build_gpt2_decoder,
    "lstm": CaptionerLSTMDecoder,
}


@dataclass
class CaptionerSeq2SeqLMOutput(Seq2SeqLMOutput):
    r"""
    attention_penalty (`torch.FloatTensor` of shape `()`, *optional*):
        The "lstm" decoder's doubly stochastic attention regularisation (Show, Attend and Tell §4.2.1), λ included,
        computed when training or given labels; already part of `loss`, returned for losses computed elsewhere.
    """

    attention_penalty: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------------
# COUPLINGS TO TRANSFORMERS' INTERNALS
#
# What follows leans on transformers' private or undocumented behaviour; a transformers release may change any of it
# without notice. Each entry: what we rely on, why, and the test in tests/test_transformers_couplings.py that fails
# when it no longer holds. Keep new couplings here, listed.
#
#  1. Class swap on GPT-2's cross-attention (`speed_up_gpt2`, `CaptionerGPT2CrossAttention`): GPT2Block calls
#     `self.crossattention(hidden_states, cache=, attention_mask=, encoder_hidden_states=, encoder_attention_mask=,
#     output_attentions=, **kwargs)`, and GPT2Attention keeps `is_cross_attention`, `c_attn`, `q_attn`, `c_proj`,
#     `split_size`, `head_dim`, `layer_idx`, `scaling`, `reorder_and_upcast_attn`. Why: one cross-attention K/V row
#     per image for all its beams. Also swaps NewGELUActivation for GELUTanh (one kernel, same function).
#     Test: test_gpt2_cross_attention_swap_keeps_gpt2s_shape.
#  2. `_attn_implementation` mutated per call (`_eager_gpt2_attention`): GPT-2 reads
#     `config._attn_implementation` at each forward, so setting "eager" for one call returns attention weights under
#     SDPA. Test: test_output_attentions_under_sdpa_switches_gpt2_to_eager_for_the_call.
#  3. `forward.__signature__` set once (`CaptionerTransformersCouplings.__init_subclass__`): generate() calls
#     `inspect.signature(self.forward)` at every step for remote-code models; a set __signature__ is returned
#     without rebuilding. Test: test_forward_signature_is_prebuilt_and_what_generate_reads.
#  4. Overrides of private GenerationMixin methods (`CaptionerTransformersCouplings`): `_beam_search` (reached by
#     name through GENERATION_MODES_MAPPING; it calls `self(...)`, and we use `_valid_auto_compile_criteria` and
#     `_default_compile_config`), `_reorder_cache` (called by beam search when the model has it),
#     `create_masks_for_generate` (looked up on the model by getattr), `_prepare_static_cache`,
#     `_expand_inputs_for_generation`, `_prepare_generated_length`, each with the parameters we call it with. Why:
#     see each method. Tests: test_private_generate_methods_keep_their_parameters and one spy per override.
#  5. Checkpoint key mapping (`register_checkpoint_conversion_mapping` below): checkpoints saved before the bridge
#     had its own module (`encoder.projection.weight`, `encoder.layers.0...`) load into `encoder.bridge.*`. Custom
#     code gets a mapping only when registered under its class name (or model_type), which this module does on
#     import, so the installed package and remote code both load old checkpoints. transformers reverses mappings on
#     save (`save_original_format=True`) and would write the old names; our `save_pretrained` defaults it to False,
#     so a checkpoint holds the model's own state-dict names, which the Trainer's resume and any `load_state_dict`
#     of the file read directly. Test: test_old_checkpoint_keys_map_to_the_bridge_and_save_writes_new_names.
#  6. `deprecate_kwarg` on `forward` (transformers.utils.deprecation): `past_key_values=` becomes `cache=` with a
#     FutureWarning. Test: test_deprecate_kwarg_renames_past_key_values.
#  7. CaptionerConfig.__getattribute__ / __setattr__ (configuration_captioner.py: it must live on the config class)
#     share token ids and vocab_size with GPT-2's text config, which transformers reads and writes in either place.
#     Test: test_config_shares_fields_with_gpt2s_text_config.
#  8. Tied weights of a GPT-2 decoder (`CaptionerForConditionalGeneration.__init__`): we refresh its
#     `all_tied_weights_keys` with `get_expanded_tied_weights_keys(all_submodels=False)`. Test:
#     test_gpt2_tied_weights_keys_api.
#  9. `AutoModel._model_mapping` (`vision_model_kwargs`) finds the vision model class of a config. Test:
#     test_auto_model_mapping_finds_vision_classes.
# 10. captioning/fast_decoding.py sets `CompileConfig._compile_all_devices`, which `_valid_auto_compile_criteria`
#     reads to compile on a CPU too. Test: test_compile_all_devices_flag_is_read_by_generate.
# ----------------------------------------------------------------------------------------------------------------


class CaptionerGPT2CrossAttention(GPT2Attention):
    """GPT-2's cross-attention (same weights, same numbers) for captions that share images: each image's keys and
    values are projected once, kept contiguous in the cache, and read by all of its beams or samples at once, where
    GPT-2's own reads a per-beam copy of the image at every step (see `fold_captions`). Swapped into a GPT-2 decoder's
    blocks by `CaptionerForConditionalGeneration` (the class only; parameters and state dict are unchanged)."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if encoder_hidden_states is None:
            return super().forward(
                hidden_states,
                cache=cache,
                attention_mask=attention_mask,
                output_attentions=output_attentions,
                **kwargs,
            )
        cross_cache = cache.cross_attention_cache if isinstance(cache, EncoderDecoderCache) else None
        if cross_cache is not None and cache.is_updated.get(self.layer_idx):
            key, value = cross_cache.layers[self.layer_idx].keys, cross_cache.layers[self.layer_idx].values
        else:
            key, value = self.c_attn(encoder_hidden_states).split(self.split_size, dim=2)
            shape = (*key.shape[:-1], -1, self.head_dim)
            key, value = key.view(shape).transpose(1, 2), value.view(shape).transpose(1, 2)
            if cross_cache is not None:  # one row per image, not per caption (the layout: `step_cache`)
                key, value = cross_cache.update(key.contiguous(), value.contiguous(), self.layer_idx)
                cache.is_updated[self.layer_idx] = True
        query = self.q_attn(hidden_states)
        query = query.view(*query.shape[:-1], -1, self.head_dim).transpose(1, 2)  # (B·g, H, T, D)
        batch_size, length = query.shape[0], query.shape[2]
        groups = caption_groups(batch_size, key.shape[0])
        mask = encoder_attention_mask
        if groups > 1 and mask is not None:
            if mask.ndim == 4 and mask.shape[0] == key.shape[0]:
                # One (B, 1, T or 1, S) mask per image, as GPT-2 builds it from the image batch: the folded queries
                # of an image (g·T, caption-major) all read it.
                mask = mask.repeat(1, 1, groups, 1) if mask.shape[2] > 1 else mask
            else:
                # A per-caption mask over the image: attend over per-caption copies, as GPT-2 does.
                key, value = key.repeat_interleave(groups, dim=0), value.repeat_interleave(groups, dim=0)
                groups = 1
        if groups > 1:
            query = fold_captions(query, groups)

        implementation = self.config._attn_implementation
        if implementation == "eager" and self.reorder_and_upcast_attn:
            attn_output, attn_weights = self._upcast_and_reordered_attn(query, key, value, mask)
        else:
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, gpt2_eager_attention_forward)
            attn_output, attn_weights = attention(
                self,
                query,
                key,
                value,
                mask,
                dropout=self.attn_dropout.p if self.training else 0.0,
                scaling=self.scaling,
                **kwargs,
            )
        # attn_output: (B, g·T, H, D) → (B·g, T, H·D)
        attn_output = attn_output.reshape(batch_size, length, -1).contiguous()
        if groups > 1 and attn_weights is not None:
            attn_weights = unfold_captions(attn_weights, groups)
        return self.resid_dropout(self.c_proj(attn_output)), attn_weights


def speed_up_gpt2(decoder: nn.Module) -> None:
    """Swaps, in place and with the same parameters, GPT-2's slow pieces for equal fast ones:
    - "gelu_new", the tanh approximation of GELU written as eight elementwise operations (each a pass over the MLP's
      activations, most saving a tensor for backward), for `F.gelu(approximate="tanh")`: the same function in one
      kernel (equal to float32 rounding, ~1e-6) that saves only its input;
    - the cross-attention class, for `CaptionerGPT2CrossAttention` (one copy of each image for all its captions).
    The config still says "gelu_new" and the state dict is unchanged, so checkpoints stay plain GPT-2. Other decoders
    have neither piece and are left as they are."""
    for parent in decoder.modules():
        if type(parent) is GPT2Attention and parent.is_cross_attention:
            parent.__class__ = CaptionerGPT2CrossAttention
        for name, child in parent.named_children():
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())


# Coupling 5: keys of checkpoints saved before `CaptionerBridge`, renamed on load (see the list above).
register_checkpoint_conversion_mapping(
    "CaptionerForConditionalGeneration",
    [WeightRenaming(r"^encoder\.(projection|position_embeddings|dropout|layers|layer_norm)\.", r"encoder.bridge.\1.")],
    overwrite=True,  # remote code imports this module again under another name
)


class CaptionerTransformersCouplings:
    """The model's overrides of private transformers methods (couplings 2-5 above); CaptionerForConditionalGeneration
    lists it first among its bases."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Coupling 3: generate() reads the forward signature of custom-code models (ours: registered for the Auto
        # classes) at every step, for a `cache_position` argument; inspect.signature would rebuild it each time.
        if "forward" in cls.__dict__:
            cls.forward.__signature__ = inspect.signature(cls.forward)

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        # Coupling 5: write the state-dict names (`encoder.bridge.*`), not the pre-bridge ones the mapping reverses to.
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    def _reorder_cache(self, cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        # Beam search only moves beams within an image (beam_idx = image * num_beams + beam), and every beam of an
        # image holds the same cross-attention keys/values: reordering them would copy every layer's K/V each step to
        # change nothing. The self-attention part (and the LSTM state kept there) is reordered as usual, a static
        # layer in place: the compiled decoding step (and its CUDA graph) reads its tensors at fixed addresses.
        self_attention = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        if not any(isinstance(layer, StaticLayer) for layer in self_attention.layers):
            self_attention.reorder_cache(beam_idx)
            return cache
        for layer in self_attention.layers:
            if layer.is_initialized:
                layer.keys.copy_(layer.keys.index_select(0, beam_idx.to(layer.keys.device)))
                layer.values.copy_(layer.values.index_select(0, beam_idx.to(layer.values.device)))
        return cache

    def _beam_search(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus, **kwargs):
        # transformers compiles the one-token step of greedy search and sampling, but beam search calls the model
        # directly. With a static cache, its steps after the (eager) first one go to a compiled forward here too.
        args = (input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus)
        if not self._valid_auto_compile_criteria(kwargs, generation_config):
            return super()._beam_search(*args, **kwargs)
        compile_config = generation_config.compile_config or self._default_compile_config()
        previous = self.__dict__.get("forward")
        eager = self.forward
        if getattr(self, "_compiled_step_config", None) != compile_config:
            self._compiled_step = torch.compile(eager, **compile_config.to_dict())
            self._compiled_step_config = compile_config

        def forward(*call_args, **call_kwargs):
            # The first step fills the cross-attention cache (is_updated); every later one has the same shapes.
            cache = call_kwargs.get("cache")
            step = self._compiled_step if cache is not None and cache.is_updated.get(0) else eager
            return step(*call_args, **call_kwargs)

        self.forward = forward  # what `self(...)` in transformers' beam search reaches
        try:
            return super()._beam_search(*args, **kwargs)
        finally:
            if previous is None:
                del self.forward
            else:
                self.forward = previous

    def create_masks_for_generate(self, attention_mask: torch.Tensor | None = None, **kwargs):
        # With a static cache generate() builds the decoder's mask in Python before every step, outside the compiled
        # step. Without padding there is nothing to build from: the decoder's own create_causal_mask makes
        # the mask inside the compiled graph, from the cache's fill level. A padding mask grows by a column a step, so
        # it still becomes a fixed-shape mask here.
        if attention_mask is None:
            return None
        return create_masks_for_generate(attention_mask=attention_mask, **kwargs)

    def _prepare_static_cache(self, cache_implementation: str, batch_size: int, max_cache_len: int, *args, **kwargs):
        # The compiled step does not check caption length (a data-dependent branch); the cache's length is checked
        # here, once, against the decoder's positions.
        if self.config.decoder_type == "transformer" and max_cache_len > self.config.max_position_embeddings:
            raise ValueError(
                f"A static cache of {max_cache_len} tokens is longer than the decoder's max_position_embeddings="
                f"{self.config.max_position_embeddings}; lower max_new_tokens or max_length."
            )
        # One cache per shape, reset and handed to the next call, as transformers did before 5.x: allocating a new one
        # per call costs more than a whole caption's decoding steps on a small model, and a CUDA graph is captured for
        # fixed tensor addresses. So a GenerateOutput's `cache` is only valid until the next generate() call.
        model_kwargs = kwargs.get("model_kwargs", args[-1] if args else {})
        encoder_length = model_kwargs["encoder_outputs"][0].shape[1]
        # A cache made under inference mode holds inference tensors, which cannot be reset outside it.
        shape = (batch_size, encoder_length, self.dtype, self.device, torch.is_inference_mode_enabled())
        kept = self.__dict__.get("_kept_static_cache")
        if kept is not None and kept[0] == shape and kept[1].self_attention_cache.get_max_length() >= max_cache_len:
            kept[1].reset()
            return kept[1]
        # Its cross-attention layers take their batch from the first update: one row per image (see `step_cache`).
        cache = super()._prepare_static_cache(cache_implementation, batch_size, max_cache_len, *args, **kwargs)
        self._kept_static_cache = (shape, cache)
        return cache

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **kwargs
    ):
        # Beams and samples of one image share its features: the Transformer and GPT-2 decoders read them through
        # `caption_groups`, so only the decoder inputs are repeated (the LSTM decoder's state is per caption from the
        # first step, so it takes per-caption copies, as transformers makes them).
        if self.config.decoder_type == "lstm":
            return super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **kwargs)
        encoder_outputs = kwargs.pop("encoder_outputs", None)
        if encoder_outputs is not None and input_ids is not None:
            images = encoder_outputs[0].shape[0]
            if input_ids.shape[0] != images:
                # Rows would otherwise be grouped per image silently (e.g. one prompt row for two images).
                raise ValueError(
                    f"decoder_input_ids has {input_ids.shape[0]} row(s) for {images} image(s): give one prompt per "
                    "image (the processor repeats a single text prompt for every image)."
                )
        input_ids, kwargs = super()._expand_inputs_for_generation(expand_size, False, input_ids, **kwargs)
        if encoder_outputs is not None:
            kwargs["encoder_outputs"] = encoder_outputs
        return input_ids, kwargs

    def _prepare_generated_length(self, generation_config, has_default_max_length, *args, **kwargs):
        # Our saved max_length is a default caption length, as transformers' own 20 is: a caller's max_new_tokens
        # replaces it without the "both max_new_tokens and max_length are set" warning on every pipeline call.
        if (
            generation_config.max_new_tokens is not None
            and generation_config.max_length == self.generation_config.max_length
        ):
            has_default_max_length = True
        return super()._prepare_generated_length(generation_config, has_default_max_length, *args, **kwargs)

    @contextlib.contextmanager
    def _eager_gpt2_attention(self, output_attentions: bool):
        """GPT-2 under SDPA returns no attention weights; for a call that asks for them, it runs eager attention
        (same numbers, slower) and goes back to its implementation afterwards."""
        text_config = self.config.text_config
        implementation = getattr(text_config, "_attn_implementation", None)
        if not output_attentions or self.config.decoder_type != "gpt2" or implementation == "eager":
            yield
            return
        text_config._attn_implementation = "eager"
        try:
            yield
        finally:
            text_config._attn_implementation = implementation


# END OF COUPLINGS TO TRANSFORMERS' INTERNALS
# ----------------------------------------------------------------------------------------------------------------


class CaptionerPreTrainedModel(PreTrainedModel):
    config_class = CaptionerConfig
    config: CaptionerConfig
    # As in VisionEncoderDecoderModel ("vision_encoder_decoder"): the captioner is its own base model (AutoModel
    # resolves to it, and its lm_head lives inside the decoder, so no head-less body exists), so `model.base_model` is
    # the model itself. The prefix is the attribute a class wrapping the captioner would keep it under: the loader
    # strips it from such a checkpoint's keys. Naming `encoder` or `decoder` instead would make half the model the
    # "base" that transformers saves, prefixes and plans on its own (neither is a PreTrainedModel for every decoder).
    base_model_prefix = "captioner"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    # Attention runs through transformers' registry (ALL_ATTENTION_FUNCTIONS) in the bridge, the Transformer decoder,
    # GPT-2 and 🤗 vision backbones; `attn_implementation=` picks it for all of them.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The forward has no data-dependent branches: generate() compiles its decoding step with a static cache.
    _can_compile_fullgraph = True
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["CaptionerEncoderLayer", "CaptionerDecoderLayer", "GPT2Block"]


class CaptionerForConditionalGeneration(CaptionerTransformersCouplings, CaptionerPreTrainedModel, GenerationMixin):
    r"""
    An image captioner: `encoder` (a 🤗 vision backbone and the bridge to the decoder width), `decoder` (a Transformer
    or GPT-2 decoder with cross-attention, which holds the `lm_head`).

    Example:

    ```python
    >>> from modeling_captioner import CaptionerConfig, CaptionerForConditionalGeneration
    >>> model = CaptionerForConditionalGeneration(CaptionerConfig.from_preset("tiny"))
    >>> ids = model.generate(pixel_values, num_beams=5)
    ```
    """

    def __init__(
        self,
        config: CaptionerConfig,
        vision_model: PreTrainedModel | None = None,
        decoder: nn.Module | None = None,
    ):
        config.validate()
        super().__init__(config)
        self.encoder = CaptionerImageEncoder(config, backbone=vision_model)
        self.decoder = decoder if decoder is not None else DECODER_CLASSES[config.decoder_type](config)
        speed_up_gpt2(self.decoder)
        if config.decoder_type == "transformer" and config.tie_word_embeddings:
            self._tied_weights_keys = {"decoder.lm_head.weight": "decoder.embed_tokens.weight"}
        # The sub-models read their configs from ours, so one save holds the single source of truth.
        self.encoder.backbone.config = config.vision_config
        if config.decoder_type == "gpt2":
            self.decoder.config = config.text_config
        output, embeddings = self.decoder.lm_head, self.decoder.get_input_embeddings()
        if not config.tie_word_embeddings and output.weight is embeddings.weight:
            # A pretrained GPT-2 arrives with its lm_head tied to wte. Untied (tie_word_embeddings=False), the lm_head
            # starts as a copy of wte and is saved on its own; a tied one is saved once, under the embeddings' name.
            output.weight = nn.Parameter(embeddings.weight.detach().clone())
        if isinstance(self.decoder, PreTrainedModel):
            # It listed its tied weights (which post_init gathers, and saving leaves out) under its own config.
            # Coupling 8 (see COUPLINGS TO TRANSFORMERS' INTERNALS).
            self.decoder.all_tied_weights_keys = self.decoder.get_expanded_tied_weights_keys(all_submodels=False)
        self.post_init()
        # Instead of transformers' model-agnostic 20 tokens, a caption may use the decoder's positions (start token
        # included), up to 64. As max_length, not max_new_tokens: a max_new_tokens default would silently override a
        # caller's max_length (e.g. Seq2SeqTrainer's generation_max_length), while either argument overrides this.
        gen = self.generation_config
        if gen is not None and gen.max_length is None and gen.max_new_tokens is None:
            gen.max_length = min(config.max_position_embeddings, 64)

    def get_encoder(self, modality: str | None = None) -> CaptionerImageEncoder:
        return self.encoder

    def get_decoder(self) -> nn.Module:
        return self.decoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        # What resize_token_embeddings() calls; it then resizes the lm_head and ties the two again where configured.
        self.decoder.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.decoder.lm_head = new_embeddings

    def part_modules(self) -> dict[str, list[nn.Module]]:
        """The modules of each part an unfreezing schedule names: "cross_attention" (the decoder's attention over
        the image: the Transformer's `cross_attn` sublayers and their norms, GPT-2's `crossattention` and
        `ln_cross_attn`, the LSTM's soft attention), "encoder" (the vision backbone), "bridge" (`CaptionerBridge`)
        and "decoder". Cross-attention sits inside the decoder and comes first: a parameter belongs to the first
        part with a module that holds it."""
        decoder = self.decoder
        if self.config.decoder_type == "lstm":
            cross_attention = [decoder.attention]
        elif isinstance(decoder, CaptionerTransformerDecoder):
            cross_attention = [m for layer in decoder.layers for m in (layer.cross_attn, layer.cross_attn_layer_norm)]
        else:  # GPT-2; without add_cross_attention its blocks have neither module
            cross_attention = [
                getattr(block, name)
                for block in decoder.transformer.h
                for name in ("crossattention", "ln_cross_attn")
                if hasattr(block, name)
            ]
        return {
            "cross_attention": cross_attention,
            "encoder": [self.encoder.backbone],
            "bridge": [self.encoder.bridge],
            "decoder": [decoder],
        }

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    # As in transformers' own models: the pre-5.x name still works, with a FutureWarning, instead of vanishing into
    # **kwargs (which left the cache unread). Coupling 6 (see COUPLINGS TO TRANSFORMERS' INTERNALS).
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        vision_features: torch.Tensor | None = None,
        **kwargs,
    ) -> CaptionerSeq2SeqLMOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images as the processor returns them. Not needed when `encoder_outputs` is given.
        decoder_input_ids (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*):
            Caption tokens fed to the decoder. Built from `labels` (shifted right, `decoder_start_token_id` first) when
            only labels are given.
        decoder_attention_mask (`torch.Tensor` of shape `(batch_size, target_length)`, *optional*):
            1 for tokens to attend to, 0 for padding; a causal mask is always applied.
        encoder_outputs (`BaseModelOutput`, *optional*):
            Output of `model.encoder(pixel_values)`, reused by generate() and feature caches.
        cache (`EncoderDecoderCache`, *optional*):
            Self- and cross-attention keys/values of earlier steps.
        labels (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*):
            Caption token ids ending in EOS; -100 marks positions the loss ignores (padding).
        vision_features (`torch.FloatTensor`, *optional*):
            The vision backbone's `last_hidden_state` for these images, precomputed (a feature cache while the
            backbone is frozen); replaces `pixel_values`, the bridge and decoder still run.
        output_attentions (`bool`, *optional*):
            Also return `cross_attentions`: one tensor per decoder layer of shape `(batch_size, num_heads,
            target_length, num_image_positions)`.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        use_cache = use_cache if use_cache is not None else self.config.use_cache

        if encoder_outputs is None:
            if pixel_values is None and vision_features is None:
                raise ValueError("CaptionerForConditionalGeneration needs pixel_values (or encoder_outputs).")
            encoder_outputs = self.encoder(
                pixel_values,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                vision_features=vision_features,
            )
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = BaseModelOutput(*encoder_outputs)

        if labels is not None:
            if not is_torchdynamo_compiling():  # a data-dependent check: eager calls only
                self._check_labels(labels)
            use_cache = False
            if decoder_input_ids is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        if decoder_input_ids is None:
            raise ValueError("CaptionerForConditionalGeneration needs labels or decoder_input_ids to decode.")

        config = self.config
        penalise = (
            config.decoder_type == "lstm"
            and config.attention != "none"
            and config.attention_regularization > 0
            and (labels is not None or (self.training and not use_cache))
        )
        # GPT-2's cross-attention views its inputs and fails on non-contiguous ones (e.g. a caller's expanded tensor).
        encoder_hidden_states = encoder_outputs.last_hidden_state.contiguous()
        # Several captions may read one image (beams, samples, several references): rows i·g … i·g+g-1 read image i.
        groups = caption_groups(decoder_input_ids.shape[0], encoder_hidden_states.shape[0])
        if groups > 1 and config.decoder_type == "lstm":
            # The recurrent decoder's state is per caption from the first step on: it reads per-caption copies.
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(groups, dim=0)
        with self._eager_gpt2_attention(output_attentions):
            decoder_outputs = self.decoder(
                input_ids=decoder_input_ids,
                attention_mask=decoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
                cache=cache,
                use_cache=use_cache,
                output_attentions=output_attentions or penalise,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        logits = decoder_outputs.logits
        penalty = None
        if penalise:
            valid = labels != -100 if labels is not None else decoder_attention_mask
            penalty = self._attention_penalty(decoder_outputs.cross_attentions[0], valid)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
            if penalty is not None:
                loss = loss + penalty

        output = CaptionerSeq2SeqLMOutput(
            loss=loss,
            attention_penalty=penalty,
            logits=logits,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions if output_attentions else None,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return output if return_dict else output.to_tuple()

    def _attention_penalty(self, maps: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Show, Attend and Tell §4.2.1: λ (1 − Σ_t α_ti)², pushing the caption to attend to every image position
        over its length; only real (non-padding) steps count. Averaged over positions i (the paper sums them), as the
        widely used PyTorch implementation does, so that λ = 1 does not swamp the word loss on large grids."""
        weights = maps[:, 0]  # (B, 1, T, N) -> (B, T, N)
        if valid is not None:
            weights = weights * valid[:, :, None].to(weights.dtype)
        coverage = weights.sum(dim=1)  # (B, N)
        return self.config.attention_regularization * ((1.0 - coverage) ** 2).mean()

    def _check_labels(self, labels: torch.Tensor) -> None:
        if labels.ndim != 2:
            raise ValueError(f"labels must have shape (batch_size, target_length), got {tuple(labels.shape)}.")
        valid = labels[labels != -100]
        if valid.numel() and (valid.min() < 0 or valid.max() >= self.config.vocab_size):
            raise ValueError(
                f"labels hold token ids outside [0, {self.config.vocab_size}) (min {int(valid.min())}, max "
                f"{int(valid.max())}); the tokenizer and config.vocab_size disagree. Use -100 for ignored positions."
            )

    @classmethod
    def from_encoder_decoder_pretrained(
        cls,
        encoder_pretrained_model_name_or_path: str,
        decoder_pretrained_model_name_or_path: str | None = None,
        tokenizer=None,
        output_loading_info: bool = False,
        **config_kwargs,
    ):
        r"""
        Build a captioner from a pretrained vision model and, for `decoder_type="gpt2"`, a pretrained GPT-2; the
        bridge (projection, positions, encoder layers) and GPT-2's cross-attention are new and trained from scratch.

        Args:
            encoder_pretrained_model_name_or_path (`str`):
                Hub id or local folder of a 🤗 vision model, e.g. `"microsoft/resnet-101"` or
                `"google/vit-base-patch16-224-in21k"`.
            decoder_pretrained_model_name_or_path (`str`, *optional*):
                Hub id or local folder of a GPT-2 model, e.g. `"gpt2"`. Without it the decoder is the from-scratch
                Transformer (unless `decoder_type="gpt2"` asks for a random GPT-2).
            tokenizer (*optional*):
                Tokenizer whose vocabulary size and special tokens the config takes.
            output_loading_info (`bool`, *optional*, defaults to `False`):
                Also return `{"new_weights": [...], "pretrained_weights": {...}}`.
            config_kwargs:
                Any CaptionerConfig field (d_model, encoder_layers, position_embedding_type, ...).
        """
        vision_config = AutoConfig.from_pretrained(encoder_pretrained_model_name_or_path)
        vision_model, vision_info = AutoModel.from_pretrained(
            encoder_pretrained_model_name_or_path, output_loading_info=True, **vision_model_kwargs(vision_config)
        )
        if vision_model.get_output_embeddings() is not None:
            raise ValueError(
                f"{encoder_pretrained_model_name_or_path} has a language-model head; pass a vision model."
            )
        config_kwargs.setdefault("image_size", getattr(vision_model.config, "image_size", 224))
        if not getattr(vision_model.config, "hidden_sizes", None):
            # Token backbones (ViT) carry their own patch positions, as in the "vit-gpt2" preset.
            config_kwargs.setdefault("position_embedding_type", "none")
        config_kwargs.setdefault("vision_model_name_or_path", str(encoder_pretrained_model_name_or_path))
        if tokenizer is not None:
            config_kwargs.update(special_tokens_from_tokenizer(tokenizer))

        decoder, decoder_info = None, None
        if decoder_pretrained_model_name_or_path is not None:
            decoder_config = AutoConfig.from_pretrained(decoder_pretrained_model_name_or_path)
            if decoder_config.model_type != "gpt2":
                raise ValueError(
                    f"{decoder_pretrained_model_name_or_path} is a {decoder_config.model_type!r} model; only GPT-2 "
                    "decoders load pretrained (the Transformer decoder trains from scratch)."
                )
            decoder, decoder_info = GPT2LMHeadModel.from_pretrained(
                decoder_pretrained_model_name_or_path, add_cross_attention=True, output_loading_info=True
            )
            config_kwargs["decoder_type"] = "gpt2"
            config_kwargs["text_config"] = decoder.config
            config_kwargs.setdefault("decoder_model_name_or_path", str(decoder_pretrained_model_name_or_path))
            if tokenizer is None:
                # GPT-2 has one special token: it starts, ends and pads captions.
                eos = decoder.config.eos_token_id
                config_kwargs.update(
                    vocab_size=decoder.config.vocab_size,
                    pad_token_id=eos,
                    bos_token_id=decoder.config.bos_token_id,
                    eos_token_id=eos,
                    decoder_start_token_id=decoder.config.bos_token_id,
                )
            elif len(tokenizer) != decoder.config.vocab_size:
                raise ValueError(
                    f"The tokenizer has {len(tokenizer)} tokens but {decoder_pretrained_model_name_or_path} has "
                    f"vocab_size={decoder.config.vocab_size}; use the decoder's own tokenizer."
                )
        loaded = [
            (part.config, part.config._attn_implementation) for part in (vision_model, decoder) if part is not None
        ]
        config = CaptionerConfig(vision_config=vision_model.config, **config_kwargs)
        # A new config resets its sub-configs' attention implementation, which the loaded parts read (GPT-2 with none
        # set would run eager attention without its causal mask): they keep the one they were loaded with.
        for part_config, implementation in loaded:
            part_config._attn_implementation = implementation
        model = cls(config, vision_model=vision_model, decoder=decoder)

        pretrained = {f"encoder.backbone.{k}" for k in vision_model.state_dict()}
        new_weights = [f"encoder.backbone.{k}" for k in vision_info["missing_keys"]]
        if decoder is not None:
            pretrained |= {f"decoder.{k}" for k in decoder.state_dict()}
            new_weights += [f"decoder.{k}" for k in decoder_info["missing_keys"]]
        new_weights = sorted(set(new_weights) | {k for k in model.state_dict() if k not in pretrained})
        logger.warning(
            f"Built a captioner from {encoder_pretrained_model_name_or_path}"
            + (f" and {decoder_pretrained_model_name_or_path}" if decoder is not None else "")
            + f"; {len(new_weights)} weight tensors are new and need training: "
            + ", ".join(_summarise_names(new_weights))
        )
        if output_loading_info:
            sources = {"encoder.backbone": str(encoder_pretrained_model_name_or_path)}
            if decoder is not None:
                sources["decoder"] = str(decoder_pretrained_model_name_or_path)
            return model, {"new_weights": new_weights, "pretrained_weights": sources}
        return model


def _summarise_names(names: list[str]) -> list[str]:
    """Group 'decoder.transformer.h.0.crossattention.c_attn.weight'-like names by module, with layer indices folded."""
    groups = []
    for name in names:
        parts = [("*" if part.isdigit() else part) for part in name.split(".")[:-1]]
        group = ".".join(parts) or name
        if group not in groups:
            groups.append(group)
    return groups


__all__ = [
    "DECODER_CLASSES",
    "CaptionerBridge",
    "CaptionerForConditionalGeneration",
    "CaptionerImageEncoder",
    "CaptionerLSTMDecoder",
    "CaptionerPreTrainedModel",
    "CaptionerSeq2SeqLMOutput",
    "CaptionerTransformerDecoder",
]
