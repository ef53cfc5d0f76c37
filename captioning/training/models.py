"""The model a run trains: its tokenizer, the captioner itself (a preset's random model, pretrained parts, or a saved
captioner), its generation settings and unfreezing schedule, and what DDP, FSDP, DeepSpeed and the speed flags need
before `accelerator.prepare`."""

import argparse
import logging
from pathlib import Path

import torch
from accelerate.utils import DistributedDataParallelKwargs, DistributedType
from transformers import AutoConfig, AutoTokenizer

from captioning.training.arguments import with_values
from captioning.training.unfreezing import PARTS, UnfreezingSchedule
from modeling_captioner import DECODER_TYPES, CaptionerConfig, CaptionerForConditionalGeneration
from tokenization import build_tokenizer

logger = logging.getLogger("train")
# With a pretrained --encoder, the bridge and a from-scratch decoder take these sizes from the preset.
PRESET_SIZES = (
    "d_model",
    "encoder_layers",
    "encoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_layers",
    "decoder_attention_heads",
    "decoder_ffn_dim",
    "max_position_embeddings",
    "dropout",
)


def is_pretrained_id(value: str | None) -> bool:
    """An --encoder/--decoder value naming pretrained weights (hub id or folder), not an architecture keyword."""
    return value is not None and value not in ("resnet", "vit", *DECODER_TYPES)


def input_image_size(args) -> int:
    """The side of the model's input images, known before the model is built: streamed images are shrunk to it
    right after decoding, unless --max_image_side says otherwise."""
    if args.model_name_or_path:
        return AutoConfig.from_pretrained(args.model_name_or_path).image_size
    if is_pretrained_id(args.encoder):
        return getattr(AutoConfig.from_pretrained(args.encoder), "image_size", 224)
    return CaptionerConfig.from_preset(args.preset, encoder=args.encoder, decoder=args.decoder).image_size


def build_tokenizer_for(args, train_captions: list[str]):
    if args.tokenizer:
        return AutoTokenizer.from_pretrained(args.tokenizer)
    if is_pretrained_id(args.decoder):
        return AutoTokenizer.from_pretrained(args.decoder)
    return build_tokenizer(train_captions, vocab_size=args.vocab_size)


def build_model(args, tokenizer) -> tuple[CaptionerForConditionalGeneration, bool, bool]:
    """The model and whether its encoder / decoder start from pretrained weights."""
    if args.model_name_or_path:
        model = CaptionerForConditionalGeneration.from_pretrained(args.model_name_or_path)
        return model, True, True
    if is_pretrained_id(args.encoder):
        decoder = args.decoder if is_pretrained_id(args.decoder) else None
        preset = CaptionerConfig.from_preset(args.preset)
        sizes = {} if decoder else {name: getattr(preset, name) for name in PRESET_SIZES}
        model = CaptionerForConditionalGeneration.from_encoder_decoder_pretrained(
            args.encoder, decoder, tokenizer=tokenizer, **sizes
        )
        return model, True, decoder is not None
    config = CaptionerConfig.from_preset(args.preset, encoder=args.encoder, decoder=args.decoder, tokenizer=tokenizer)
    return CaptionerForConditionalGeneration(config), False, False


def reference_token_limit(tokenizer, captions: list[str], limit: int) -> int:
    """The longest caption in tokens, plus its EOS, at most `limit`: what `--max_new_tokens auto` resolves to."""
    lengths = tokenizer(captions, add_special_tokens=False)["input_ids"]
    return min(limit, max(len(ids) for ids in lengths) + 1)


def configure_generation(model, tokenizer, train_captions: list[str], args) -> argparse.Namespace:
    """Sets the model's generation_config from the generation flags (validation uses it, and it is saved with the
    model); returns `args` with `--max_new_tokens auto` resolved."""
    if args.max_new_tokens == "auto":
        # Positions hold the start token and the caption.
        positions = getattr(model.config, "max_position_embeddings", None) or 1024
        args = with_values(args, max_new_tokens=reference_token_limit(tokenizer, train_captions, positions - 1))
        logger.info(f"--max_new_tokens auto: {args.max_new_tokens} (the longest training caption and its EOS)")
    model.generation_config.update(
        # Saved as max_length (the start token + max_new_tokens) so callers' max_length still overrides it.
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        max_length=args.max_new_tokens + 1,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        repetition_penalty=args.repetition_penalty,
    )
    return args


def unfreezing_schedule(args, encoder_pretrained: bool, decoder_pretrained: bool) -> UnfreezingSchedule:
    """--unfreeze_schedule, else the default for what starts pretrained."""
    if args.unfreeze_schedule:
        return UnfreezingSchedule.parse(args.unfreeze_schedule, {"encoder": args.encoder_lr_scale})
    return UnfreezingSchedule.default(encoder_pretrained, decoder_pretrained, args.encoder_lr_scale)


def prepare_for_strategy(accelerator, model, schedule: UnfreezingSchedule) -> None:
    """What DDP, FSDP and DeepSpeed each need before `accelerator.prepare`; a setup that cannot work stops here, with
    the reason."""
    freezes = any(set(stage.parts) != set(PARTS) for stage in schedule.stages)
    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        if plugin.fsdp_version != 2:
            raise SystemExit(
                f"train.py needs FSDP version 2 (fsdp_version: 2 in the accelerate config, as in "
                f"configs/accelerate/fsdp.yaml), got version {plugin.fsdp_version}: version 1 wraps the model so that "
                "generate() cannot run on it for validation, and flattens the parameters the unfreezing schedule "
                "freezes by name."
            )
        # Accelerate refuses a layer class the model lacks; one config file names the layers of every decoder
        # (CaptionerEncoderLayer, CaptionerDecoderLayer, GPT2Block), so keep those this model has.
        present = {type(module).__name__ for module in model.modules()}
        wanted = plugin.transformer_cls_names_to_wrap or list(getattr(model, "_no_split_modules", None) or [])
        plugin.transformer_cls_names_to_wrap = [name for name in wanted if name in present]
    elif accelerator.distributed_type == DistributedType.DEEPSPEED:
        if len(schedule.stages) > 1:
            raise SystemExit(
                f"DeepSpeed fixes which parameters train when it starts, but the unfreezing schedule has "
                f"{len(schedule.stages)} stages: give --unfreeze_schedule one stage (e.g. "
                "'encoder,bridge,cross_attention,decoder@0'), or use DDP or FSDP for a staged schedule."
            )
        schedule.apply(model, 0)
    elif accelerator.num_processes > 1 and freezes:
        # DDP waits for a gradient of every parameter it was built with; a group frozen by the schedule sends none,
        # and find_unused_parameters tells DDP to stop waiting for it (and to leave its gradient None, so AdamW leaves
        # the frozen weights alone).
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)


def uses_channels_last(model, device: torch.device) -> bool:
    """Whether the backbone's weights and the images go channels-last (NHWC): on CUDA, for a convolutional backbone
    (ResNet, ConvNeXt: configs with `hidden_sizes`), whose cuDNN convolutions run NHWC natively on tensor cores
    (PyTorch's channels-last tutorial). A ViT cuts its images into patches and gains nothing; a CPU keeps NCHW."""
    return device.type == "cuda" and bool(getattr(model.encoder.backbone.config, "hidden_sizes", None))


def enable_gradient_checkpointing(model) -> None:
    """--gradient_checkpointing on the model before `accelerator.prepare`: its checkpointing layers (decoder layers,
    the bridge's encoder layers, a 🤗 backbone's own) recompute their activations in the backward pass. Non-reentrant
    checkpointing, torch's recommended kind: it works with frozen inputs, keyword arguments and torch.compile, and
    replays the same dropout masks."""
    kwargs = {"use_reentrant": False}
    try:
        if hasattr(model, "activation_checkpointing_enable"):  # its name in later transformers 5 releases
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    except ValueError as error:
        raise SystemExit(f"--gradient_checkpointing: {error}") from error


def set_up_speed(model, args, accelerator) -> bool:
    """Gradient checkpointing and channels-last as the flags and device ask, before `accelerator.prepare`; logs every
    speed setting. Returns whether the images go channels-last too."""
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    channels_last = uses_channels_last(model, accelerator.device)
    if channels_last:
        model.encoder.backbone.to(memory_format=torch.channels_last)
    pinned = accelerator.device.type == "cuda"
    compile_with = f"{args.torch_compile_backend or 'inductor'}, mode {args.torch_compile_mode or 'default'}"
    logger.info(
        f"speed: {args.num_workers} DataLoader worker(s); pinned memory and non-blocking copies "
        f"{'on' if pinned else 'off'}; channels_last {'on' if channels_last else 'off'}; torch.compile "
        f"{compile_with if args.torch_compile else 'off'}; gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}"
    )
    return channels_last


def compiled(model, args, accelerator):
    """The prepared model compiled with torch.compile (--torch_compile), to run the training step's forward (its
    backward is compiled with it); else `model`. Only the step runs compiled: validation generates with the eager
    model, and saving, unwrapping and checkpoints see the prepared model as without the flag (no `_orig_mod.` in
    parameter names), so a run can resume with or without --torch_compile."""
    if not args.torch_compile:
        return model
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise SystemExit(
            "--torch_compile with DeepSpeed: DeepSpeed compiles its engine itself (its config's compile section); "
            "leave out --torch_compile, or use DDP or FSDP."
        )
    return torch.compile(model, mode=args.torch_compile_mode, backend=args.torch_compile_backend or "inductor")


def save_model(accelerator, model, processor, output_dir: Path) -> None:
    """The model and its processor as a 🤗 folder. Call it on every process: under FSDP or DeepSpeed ZeRO-3 each
    process holds a shard of the weights and takes part in gathering them; only the main process writes."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(output_dir)
