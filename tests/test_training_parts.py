"""The pieces train.py is built from: the unfreezing schedule, the caption loss and the feature cache."""

import numpy as np
import pytest
import torch
from conftest import tiny_model

from captioning.training.feature_cache import FeatureCache, cache_key, cached_vision_features
from captioning.training.losses import caption_loss
from captioning.training.unfreezing import (
    PARTS,
    UnfreezingSchedule,
    adamw_implementation,
    build_adamw,
    optimizer_groups,
    parameter_part,
    parameter_parts,
    train_mode,
)


@pytest.mark.parametrize("decoder", ["transformer", "gpt2"])
def test_every_parameter_has_one_part(decoder, tokenizer):
    model = tiny_model("resnet", decoder, tokenizer)
    parts = parameter_parts(model)
    assert list(parts) == [name for name, _ in model.named_parameters(remove_duplicate=False)]
    assert set(parts.values()) == set(PARTS)
    cross = [n for n, g in parts.items() if g == "cross_attention"]
    assert cross and all(("cross_attn" in n) or ("crossattention" in n) or ("ln_cross_attn" in n) for n in cross)
    assert all(g == "encoder" for n, g in parts.items() if n.startswith("encoder.backbone."))
    assert all(g == "bridge" for n, g in parts.items() if n.startswith("encoder.bridge."))
    name = next(iter(parts))
    assert parameter_part(model, name) == parts[name]


def name_based_part(name: str) -> str:
    """The parts as they were assigned before the model listed its modules: by parameter name (the bridge's names
    then began with `encoder.` directly; `encoder.bridge.` keeps that prefix, so the rule still reads them)."""
    if name.startswith("encoder.backbone."):
        return "encoder"
    if name.startswith("encoder."):
        return "bridge"
    if ".cross_attn" in name or ".crossattention." in name or ".ln_cross_attn." in name:
        return "cross_attention"
    if name.startswith("decoder.attention."):
        return "cross_attention"
    if name.startswith("decoder."):
        return "decoder"
    raise ValueError(name)


@pytest.mark.parametrize("encoder", ["resnet", "vit"])
@pytest.mark.parametrize(
    ("decoder", "overrides"),
    [("transformer", {}), ("gpt2", {}), ("gpt2", {"tie_word_embeddings": False}), ("lstm", {})],
    ids=["transformer", "gpt2", "gpt2-untied", "lstm"],
)
def test_parts_follow_the_models_modules_as_the_names_did(encoder, decoder, overrides, tokenizer):
    model = tiny_model(encoder, decoder, tokenizer, **overrides)
    expected = {name: name_based_part(name) for name, _ in model.named_parameters(remove_duplicate=False)}
    assert parameter_parts(model) == expected
    # The schedule and the optimizer groups read the same assignment.
    schedule = UnfreezingSchedule.parse("bridge,cross_attention@0;decoder@1;encoder@2", {"encoder": 0.1})
    for epoch in range(3):
        schedule.apply(model, epoch)
        trainable = schedule.trainable_parts(epoch)
        assert {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)} == {
            n: part in trainable for n, part in expected.items()
        }
    by_id = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer_groups(model, schedule, learning_rate=1.0, weight_decay=0.1):
        part = group["name"].removesuffix("-no_decay")
        assert {expected[by_id[id(p)]] for p in group["params"]} == {part}
        assert group["lr"] == (0.1 if part == "encoder" else 1.0)
    sizes = dict.fromkeys(PARTS, 0)
    for name, parameter in model.named_parameters():
        sizes[expected[name]] += parameter.numel()
    assert f"bridge {sizes['bridge']:,}" in schedule.describe(model)


def test_default_schedule_for_pretrained_parts(tokenizer):
    schedule = UnfreezingSchedule.default(encoder_pretrained=True, decoder_pretrained=True, encoder_lr_scale=0.1)
    assert [s.start_epoch for s in schedule.stages] == [0, 1, 2]
    assert schedule.trainable_parts(0) == ("bridge", "cross_attention")
    assert schedule.trainable_parts(1) == ("bridge", "cross_attention", "decoder")
    assert schedule.trainable_parts(5) == ("bridge", "cross_attention", "decoder", "encoder")
    assert schedule.lr_scales == {"encoder": 0.1}
    # From scratch, every part is new: one stage, everything trains from the start.
    scratch = UnfreezingSchedule.default(encoder_pretrained=False, decoder_pretrained=False)
    assert len(scratch.stages) == 1 and set(scratch.trainable_parts(0)) == set(PARTS)
    # A pretrained encoder with the from-scratch decoder: the decoder is new, so it trains in stage 1.
    encoder_only = UnfreezingSchedule.default(encoder_pretrained=True, decoder_pretrained=False)
    assert [s.parts for s in encoder_only.stages] == [
        ("bridge", "cross_attention", "decoder"),
        ("bridge", "cross_attention", "decoder", "encoder"),
    ]


def test_schedule_applies_requires_grad_and_keeps_frozen_batchnorm_in_eval(tokenizer):
    model = tiny_model("resnet", "transformer", tokenizer)
    schedule = UnfreezingSchedule.parse("bridge,cross_attention,decoder@0;encoder@2")
    parts = schedule.apply(model, epoch=1)
    train_mode(model, parts)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("encoder.backbone."))
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("decoder."))
    assert not model.encoder.backbone.training and model.decoder.training
    batchnorm = next(m for m in model.encoder.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = batchnorm.running_mean.clone()
    model(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([[5, 6], [7, 3]]))
    torch.testing.assert_close(batchnorm.running_mean, before, atol=0, rtol=0)
    parts = schedule.apply(model, epoch=2)
    train_mode(model, parts)
    assert model.encoder.backbone.training and all(p.requires_grad for p in model.parameters())
    assert "stage 2 from epoch 2" in schedule.describe(model) and "frozen: encoder" in schedule.describe(model)


def test_fused_adamw_takes_the_same_steps_as_torch_default(tokenizer):
    """train.py's AdamW (fused where the device has the kernel) over optimizer_groups, frozen parts included: the
    same updates as torch's default implementation, per-group learning rates and weight decay kept."""
    models = [tiny_model("vit", "gpt2", tokenizer) for _ in range(2)]
    schedule = UnfreezingSchedule.parse("bridge,cross_attention,decoder@0;encoder@1")
    schedule.lr_scales["decoder"] = 0.5
    optimizers = {}
    for model, optim in zip(models, ("adamw_torch_fused", "adamw_torch"), strict=True):
        schedule.apply(model, 0)
        optimizers[optim] = build_adamw(optimizer_groups(model, schedule, 1e-2, 0.1), torch.device("cpu"), optim)
    assert optimizers["adamw_torch_fused"].defaults["fused"] and not optimizers["adamw_torch"].defaults["fused"]
    pixel_values, labels = torch.randn(2, 3, 32, 32), torch.tensor([[5, 6, 3], [7, 3, -100]])
    frozen = {n: p.clone() for n, p in models[0].named_parameters() if not p.requires_grad}
    # One step: after it, the attention keys' biases (whose gradient is zero but for rounding, softmax being blind
    # to a shift shared by all keys) would take the two implementations' rounding apart.
    for model, optimizer in zip(models, optimizers.values(), strict=True):
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        optimizer.step()
    for (name, fused), (_, default) in zip(models[0].named_parameters(), models[1].named_parameters(), strict=True):
        torch.testing.assert_close(fused, default, msg=name)
        states = [
            optimizer.state.get(p, {}) for optimizer, p in zip(optimizers.values(), (fused, default), strict=True)
        ]
        assert (
            states[0].keys()
            == states[1].keys()
            == ({"step", "exp_avg", "exp_avg_sq"} if fused.grad is not None else set())
        )
        for key in states[0]:
            torch.testing.assert_close(states[0][key].float(), states[1][key].float())
    assert all(torch.equal(p, frozen[n]) for n, p in models[0].named_parameters() if n in frozen)
    assert {g["lr"] for g in optimizers["adamw_torch_fused"].param_groups} == {1e-2, 5e-3}


def test_adamw_with_fp16_loss_scaling_lets_accelerate_see_skipped_steps():
    """Accelerate holds the LR schedule on an overflowed fp16 step only if the GradScaler skips optimizer.step(); it
    calls a fused optimizer's step every time (the kernel skips itself), so train.py's AdamW is unfused there."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from conftest import reset_accelerator_state

    Accelerator(cpu=True)
    try:
        parameter = torch.nn.Parameter(torch.ones(3))
        adamw = build_adamw([parameter], torch.device("cpu"), loss_scaling=True, lr=0.1)
        assert adamw_implementation(adamw) == "torch default"
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        optimizer = AcceleratedOptimizer(adamw, device_placement=False, scaler=scaler)
        for factor, skipped in ((float("inf"), True), (1.0, False)):
            scaler.scale((parameter * torch.tensor([1.0, factor, 1.0])).sum()).backward()
            optimizer.step()
            optimizer.zero_grad()
            assert optimizer.step_was_skipped is skipped
            assert torch.equal(parameter.detach(), torch.ones(3)) is skipped
    finally:
        reset_accelerator_state()


def test_a_loaded_state_decides_the_implementation():
    layer = torch.nn.Linear(2, 2)
    layer(torch.ones(1, 2)).sum().backward()
    default = build_adamw(layer.parameters(), torch.device("cpu"), "adamw_torch")
    default.step()
    fused = build_adamw(layer.parameters(), torch.device("cpu"))
    assert adamw_implementation(fused) == "fused"
    fused.load_state_dict(default.state_dict())
    assert adamw_implementation(fused) == "torch default"  # as train.py's log says after a resume


def test_adamw_without_a_fused_kernel_falls_back_and_bad_names_are_refused():
    layer = torch.nn.Linear(2, 2)
    # Generators inside groups are read once, for the check and for torch.
    groups = [{"params": (p for p in layer.parameters()), "lr": 0.1}]
    assert build_adamw(groups, torch.device("cpu")).param_groups[0]["params"] == list(layer.parameters())
    assert not build_adamw(layer.parameters(), torch.device("meta")).defaults["fused"]
    with pytest.raises(ValueError, match="Unknown optimizer 'sgd'"):
        build_adamw(layer.parameters(), torch.device("cpu"), "sgd")
    with pytest.raises(TypeError, match="not a tensor"):
        build_adamw(layer.weight, torch.device("cpu"))


@pytest.mark.parametrize(
    ("text", "message"),
    [("decoder@1", "must begin at 0"), ("bridge@0;decoder", "part,part@EPOCH"), ("wings@0", "Unknown part")],
)
def test_bad_schedules_are_rejected(text, message):
    with pytest.raises(ValueError, match=message):
        UnfreezingSchedule.parse(text)


def test_caption_loss_label_smoothing_and_eos_suppression():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[4, 5, 6, 3, -100], [7, 3, -100, -100, -100]])
    plain, _ = caption_loss(logits, labels)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(plain, expected)
    smoothed, _ = caption_loss(logits, labels, label_smoothing=0.1)
    assert smoothed.item() != pytest.approx(plain.item())
    # EOS (id 3) probability at positions 0..2 where the reference does not end: row 0 positions 0-2, row 1 position 0.
    suppressed, parts = caption_loss(logits, labels, eos_token_id=3, eos_min_length=3, eos_penalty=2.0)
    p_eos = logits.softmax(-1)[..., 3]
    where = torch.tensor([[True, True, True, False, False], [True, False, False, False, False]])
    penalty = -torch.log1p(-p_eos[where]).mean()
    torch.testing.assert_close(suppressed, plain + 2.0 * penalty)
    assert parts["eos_suppression"].item() == pytest.approx(penalty.item())
    # Captions that end at once have no early position to suppress EOS at: no penalty, the loss is the cross-entropy.
    ended = torch.tensor([[3, -100, -100, -100, -100], [3, -100, -100, -100, -100]])
    unsuppressed, parts = caption_loss(logits, ended, eos_token_id=3, eos_min_length=3, eos_penalty=2.0)
    assert parts["eos_suppression"].item() == 0.0 and unsuppressed.item() == caption_loss(logits, ended)[0].item()
    with pytest.raises(ValueError, match="eos_token_id"):
        caption_loss(logits, labels, eos_min_length=3, eos_penalty=1.0)


def test_feature_cache_stores_reads_and_survives_reopening(tmp_path, tokenizer):
    model = tiny_model("resnet", "transformer", tokenizer)
    from modeling_captioner import build_image_processor

    processor = build_image_processor(model.config)
    key = cache_key(model.encoder.backbone, processor, "split-a")
    assert key != cache_key(model.encoder.backbone, processor, "split-b")
    pixel_values = torch.randn(4, 3, 32, 32)
    cache = FeatureCache(tmp_path, key, num_items=10)
    first = cached_vision_features(model, cache, [3, 7], pixel_values[:2])
    torch.testing.assert_close(first, model.encoder.backbone_features(pixel_values[:2]))
    assert len(cache) == 2 and not cache.complete
    # Cached rows are read, not recomputed: garbage pixels for row 3 do not change its features.
    again = cached_vision_features(model, cache, [3, 5], torch.stack([torch.full((3, 32, 32), 9.0), pixel_values[2]]))
    torch.testing.assert_close(again[0], first[0])
    cache.flush()
    reopened = FeatureCache(tmp_path, key, num_items=10)
    assert reopened.filled.tolist() == cache.filled.tolist()
    torch.testing.assert_close(reopened.get([7]), first[1:])
    # Other weights give another key: a cache is never used for weights it was not made with.
    with torch.no_grad():
        next(model.encoder.backbone.parameters()).add_(1.0)
    assert cache_key(model.encoder.backbone, processor, "split-a") != key
    with pytest.raises(ValueError, match="holds 10 items, not 11"):
        FeatureCache(tmp_path, key, num_items=11)
    assert np.load(tmp_path / key / "filled.npy").sum() == 3
