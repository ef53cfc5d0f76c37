"""Staged unfreezing as a declared schedule: which parts of the model train from which epoch, and at what learning rate
scale (new parts first, then the pretrained decoder, then the pretrained encoder at a lower rate)."""

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

# AdamW implementations, by the names TrainingArguments.optim gives them; the Trainer's default is the fused one.
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch")

# Every parameter of a captioner belongs to exactly one part.
PARTS = ("encoder", "bridge", "cross_attention", "decoder")


def parameter_parts(model: nn.Module, with_buffers: bool = False) -> dict[str, str]:
    """The part of every parameter (and, `with_buffers`, every buffer: BatchNorm statistics) of a
    CaptionerForConditionalGeneration, by name: the model lists each part's modules (`part_modules`), and a tensor
    belongs to the first part with a module that holds it."""
    owner = {}
    for part, modules in model.part_modules().items():
        if part not in PARTS:
            raise ValueError(f"The model names a part {part!r} that is not one of {PARTS}.")
        for module in modules:
            tensors = [*module.parameters(), *module.buffers()] if with_buffers else module.parameters()
            for tensor in tensors:
                owner.setdefault(id(tensor), part)
    # Every name a tensor has (a tied lm_head too), so the answer covers the state dict's names.
    named = [*model.named_parameters(remove_duplicate=False)]
    if with_buffers:
        named += model.named_buffers(remove_duplicate=False)
    parts = {}
    for name, tensor in named:
        if id(tensor) not in owner:
            raise ValueError(f"Parameter {name!r} belongs to no unfreezing part {PARTS}.")
        parts[name] = owner[id(tensor)]
    return parts


def parameter_part(model: nn.Module, name: str) -> str:
    """The part of one parameter of `model`, by name (see `parameter_parts`)."""
    return parameter_parts(model)[name]


@dataclass(frozen=True)
class Stage:
    """From `start_epoch` on, the parameters of `parts` train (all others are frozen)."""

    start_epoch: int
    parts: tuple[str, ...]


@dataclass
class UnfreezingSchedule:
    stages: list[Stage]
    lr_scales: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not self.stages:
            raise ValueError("An unfreezing schedule needs at least one stage.")
        starts = [stage.start_epoch for stage in self.stages]
        if starts[0] != 0 or starts != sorted(set(starts)):
            raise ValueError(f"Stage start epochs must begin at 0 and increase strictly; got {starts}.")
        for stage in self.stages:
            unknown = set(stage.parts) - set(PARTS)
            if unknown:
                raise ValueError(f"Unknown part(s) {sorted(unknown)} in the schedule; use {PARTS}.")

    @classmethod
    def parse(cls, text: str, lr_scales: dict[str, float] | None = None) -> "UnfreezingSchedule":
        """Parse "bridge,cross_attention,decoder@0;encoder@2": parts that join at each epoch (they stay unfrozen)."""
        stages, trainable = [], []
        for clause in filter(None, (c.strip() for c in text.split(";"))):
            names, _, epoch = clause.partition("@")
            if not epoch.strip().isdigit():
                raise ValueError(f"Schedule clause {clause!r} must look like 'part,part@EPOCH' (e.g. 'encoder@2').")
            trainable += [n.strip() for n in names.split(",") if n.strip() and n.strip() not in trainable]
            stages.append(Stage(int(epoch), tuple(trainable)))
        return cls(stages, dict(lr_scales or {}))

    @classmethod
    def default(
        cls, encoder_pretrained: bool, decoder_pretrained: bool, encoder_lr_scale: float = 0.1
    ) -> "UnfreezingSchedule":
        """New parts (bridge, cross-attention, any randomly initialised part) first; a pretrained decoder joins at
        epoch 1, a pretrained encoder one epoch later at `encoder_lr_scale` times the learning rate."""
        parts = ["bridge", "cross_attention"]
        if not decoder_pretrained:
            parts.append("decoder")
        if not encoder_pretrained:
            parts.append("encoder")
        stages = [Stage(0, tuple(parts))]
        if decoder_pretrained:
            parts = [*parts, "decoder"]
            stages.append(Stage(stages[-1].start_epoch + 1, tuple(parts)))
        if encoder_pretrained:
            stages.append(Stage(stages[-1].start_epoch + 1, (*parts, "encoder")))
        return cls(stages, {"encoder": encoder_lr_scale} if encoder_pretrained else {})

    def stage_index(self, epoch: int) -> int:
        return max(i for i, stage in enumerate(self.stages) if stage.start_epoch <= epoch)

    def trainable_parts(self, epoch: int) -> tuple[str, ...]:
        return self.stages[self.stage_index(epoch)].parts

    def apply(self, model: nn.Module, epoch: int) -> tuple[str, ...]:
        """Set requires_grad for the stage of `epoch`; a frozen backbone also goes to eval mode (in `train_mode`)."""
        parts = self.trainable_parts(epoch)
        part_of = parameter_parts(model)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(part_of[name] in parts)
        return parts

    def describe(self, model: nn.Module) -> str:
        """Trainable parameters per stage, for --dry_run."""
        sizes = dict.fromkeys(PARTS, 0)
        part_of = parameter_parts(model)
        for name, parameter in model.named_parameters():
            sizes[part_of[name]] += parameter.numel()
        lines = []
        for i, stage in enumerate(self.stages):
            trainable = sum(sizes[g] for g in stage.parts)
            parts = ", ".join(
                f"{g} {sizes[g]:,}" + (f" (lr ×{self.lr_scales[g]})" if g in self.lr_scales else "")
                for g in stage.parts
            )
            frozen = [g for g in PARTS if g not in stage.parts and sizes[g]]
            lines.append(
                f"stage {i + 1} from epoch {stage.start_epoch}: {trainable:,} trainable parameters [{parts}]"
                + (f"; frozen: {', '.join(frozen)}" if frozen else "")
            )
        return "\n".join(lines)


def train_mode(model: nn.Module, trainable_parts: tuple[str, ...]) -> None:
    """model.train(), except a frozen backbone, which stays in eval mode so its BatchNorm statistics stay put."""
    model.train()
    if "encoder" not in trainable_parts:
        model.encoder.backbone.eval()


def optimizer_groups(model: nn.Module, schedule: UnfreezingSchedule, learning_rate: float, weight_decay: float):
    """AdamW's parameter groups: no weight decay on biases, norms and embeddings; each part at its schedule's LR scale."""
    groups: dict[tuple[str, bool], list] = {}
    part_of = parameter_parts(model)
    for name, parameter in model.named_parameters():
        no_decay = parameter.ndim < 2 or "embed" in name or "wte" in name or "wpe" in name or "norm" in name
        groups.setdefault((part_of[name], no_decay), []).append(parameter)
    return [
        {
            "params": params,
            "lr": learning_rate * schedule.lr_scales.get(part, 1.0),
            "weight_decay": 0.0 if no_decay else weight_decay,
            "name": f"{part}{'-no_decay' if no_decay else ''}",
        }
        for (part, no_decay), params in sorted(groups.items())
    ]


def build_adamw(
    groups, device: torch.device, optim: str = "adamw_torch_fused", loss_scaling: bool = False, **defaults
) -> torch.optim.AdamW:
    """
    AdamW over `groups` (parameters or `optimizer_groups`), for parameters that will train on `device`; `defaults`
    (lr, weight_decay, ...) go to torch.optim.AdamW.

    "adamw_torch_fused", the Trainer's default too, updates all parameters in one fused kernel per step: the same
    arithmetic as torch's default implementation, which on a CPU loops over the tensors with eight operations each
    (several times slower for a GPT-2-sized decoder; BENCHMARKS.md has the figures). torch's default is used
    instead where torch has no fused kernel for `device` (or a parameter is not floating point), and with
    `loss_scaling` (fp16 with a GradScaler): Accelerate holds the learning-rate schedule back on a step whose
    gradients overflowed only when the scaler skips `optimizer.step()`, and with a fused optimizer the scaler calls it
    every time and lets the kernel skip, so the schedule would run ahead (huggingface/accelerate#4242).
    "adamw_torch" is torch's default: a for-each loop on GPUs, a per-tensor loop on CPUs.
    """
    if optim not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optim!r}; expected one of {OPTIMIZERS}.")
    if isinstance(groups, torch.Tensor):
        raise TypeError("build_adamw takes an iterable of parameters or of parameter groups, not a tensor.")
    groups = [dict(group, params=_as_list(group["params"])) if isinstance(group, dict) else group for group in groups]
    parameters = [p for group in groups for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = (
        optim == "adamw_torch_fused"
        and not loss_scaling
        and device.type in _get_fused_kernels_supported_devices()
        and all(torch.is_floating_point(p) for p in parameters)
    )
    return torch.optim.AdamW(groups, fused=fused or None, **defaults)


def adamw_implementation(optimizer: torch.optim.Optimizer) -> str:
    """ "fused" or "torch default": what the optimizer runs now. Loading a state dict takes this from the checkpoint's
    parameter groups, so a resumed run continues with the implementation it was saved with."""
    return "fused" if optimizer.param_groups[0].get("fused") else "torch default"


def _as_list(params) -> list:
    return [params] if isinstance(params, torch.Tensor) else list(params)
