"""Seq2SeqTrainer trains and scores captioners with the package's pieces (captioning.training.trainer): the Trainer collator,
compute_metrics on generated captions equal to train.py's evaluation, the staged-unfreezing callback (also across a
resume), and images that fail to load."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

from captioning.data import load_caption_splits
from captioning.evaluation.command import generate_captions
from captioning.evaluation.diagnostics import caption_diagnostics
from captioning.evaluation.metrics import compute_caption_metrics
from captioning.training.trainer import (
    CaptionMetrics,
    CaptionTrainingCallback,
    SkipFailedImages,
    TrainerCollator,
    loadable_subset,
)
from captioning.training.unfreezing import UnfreezingSchedule, parameter_parts
from modeling_captioner import CaptionerConfig, CaptionerProcessor, build_image_processor


def trainer_args(tmp_path, **overrides) -> Seq2SeqTrainingArguments:
    settings = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "learning_rate": 1e-3,
        "report_to": [],
        "remove_unused_columns": False,
        "use_cpu": True,
        "save_strategy": "no",
        "predict_with_generate": True,
        "generation_num_beams": 3,
        "generation_max_length": 7,
        "seed": 0,
        "data_seed": 0,
    }
    return Seq2SeqTrainingArguments(**{**settings, **overrides})


def break_images(dataset, indices, folder):
    """Point the records at `indices` to a file that is not an image (it fails when the item is loaded)."""
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for index in indices:
        dataset.records[index] = dataclasses.replace(dataset.records[index], image=str(corrupt))


@pytest.mark.parametrize("decoder", ["transformer", "lstm"])
def test_trainer_trains_and_scores_generated_captions_like_train_py(decoder, tokenizer, tmp_path):
    splits = load_caption_splits("synthetic", sizes=(32, 12, 8))
    model = tiny_model("resnet", decoder, tokenizer)
    processor = CaptionerProcessor(build_image_processor(model.config), tokenizer)
    collator = TrainerCollator(processor, max_length=model.config.max_position_embeddings)
    validation = loadable_subset(splits["validation"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Seq2SeqTrainer(
        model=model,
        args=trainer_args(tmp_path, max_steps=3),
        train_dataset=SkipFailedImages(splits["train"]),
        eval_dataset=validation,
        data_collator=collator,
        compute_metrics=CaptionMetrics(processor, validation, meteor=False),
        callbacks=[CaptionTrainingCallback(collator)],
    )
    assert trainer.train().global_step == 3
    changed = [n for n, p in model.named_parameters() if not p.detach().equal(before[n])]
    assert len(changed) > 0.9 * len(before), sorted(set(before) - set(changed))
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"]) and metrics["eval_num_images"] == 12
    # The same numbers as train.py's evaluation of the same model with the same generation settings.
    predictions, references, dropped, _ = generate_captions(
        model, processor, validation, show_progress=False, num_beams=3, max_length=7
    )
    expected = compute_caption_metrics(predictions, references, meteor=False)
    assert dropped == 0
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D"):
        assert metrics[f"eval_{name}"] == pytest.approx(expected[name], abs=1e-9), name
    # The captions' diagnostics too; compute_metrics gets no EOS information, so no truncated share.
    for name, value in caption_diagnostics(predictions).items():
        assert metrics[f"eval_{name}"] == value, name
    assert "eval_truncated" not in metrics


def parameters_by_part(model) -> dict[str, dict[str, torch.Tensor]]:
    """Every tensor of the state dict (BatchNorm statistics included) by unfreezing part."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    parts = parameter_parts(model, with_buffers=True)
    for name, value in model.state_dict().items():
        groups.setdefault(parts[name], {})[name] = value.detach().clone()
    return groups


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


def test_unfreezing_callback_follows_the_schedule_and_resumes_in_its_stage(tokenizer, tmp_path):
    splits = load_caption_splits("synthetic", sizes=(32, 8, 8))
    schedule = UnfreezingSchedule.parse("bridge,cross_attention,decoder@0;encoder@1")

    def run(output_dir, resume=None, epochs=2):
        model = tiny_model("resnet", "transformer", tokenizer)
        processor = CaptionerProcessor(build_image_processor(model.config), tokenizer)
        collator = TrainerCollator(processor, max_length=model.config.max_position_embeddings)
        callback = CaptionTrainingCallback(collator, schedule)
        stages = []

        class Spy(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                stages.append((callback.stage, collator.epoch, model.encoder.backbone.training))

        trainer = Seq2SeqTrainer(
            model=model,
            args=trainer_args(output_dir, num_train_epochs=epochs, save_strategy="epoch"),
            train_dataset=SkipFailedImages(splits["train"]),
            data_collator=collator,
            callbacks=[callback, Spy()],
        )
        initial = parameters_by_part(model)
        trainer.train(resume_from_checkpoint=resume)
        return model, initial, stages

    model, initial, stages = run(tmp_path / "full")
    # 4 steps per epoch: stage 1 with a frozen backbone in eval mode, then stage 2 with everything training.
    assert stages == [(0, 0, False)] * 4 + [(1, 1, True)] * 4
    after_epoch_0 = load_file(tmp_path / "full" / "checkpoint-4" / "model.safetensors")
    # Frozen in epoch 0: backbone weights and BatchNorm statistics untouched; the rest trained.
    assert same(initial["encoder"], {n: after_epoch_0[n] for n in initial["encoder"]})
    assert not same(initial["decoder"], {n: after_epoch_0[n] for n in initial["decoder"] if n in after_epoch_0})
    final = parameters_by_part(model)
    assert not same(initial["encoder"], final["encoder"])

    # Resuming from the end of epoch 0 starts in stage 2 and ends where the uninterrupted run ended.
    resumed, _, resumed_stages = run(tmp_path / "full", resume=str(tmp_path / "full" / "checkpoint-4"))
    assert resumed_stages == [(1, 1, True)] * 4
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)


def test_images_that_fail_to_load(tokenizer, tmp_path, caplog):
    splits = load_caption_splits("synthetic", sizes=(16, 8, 8))
    train, validation = splits["train"], splits["validation"]
    break_images(train, range(8), tmp_path)  # the whole first batch
    break_images(validation, [2, 5], tmp_path)
    model = tiny_model("resnet", "transformer", tokenizer)
    processor = CaptionerProcessor(build_image_processor(model.config), tokenizer)
    collator = TrainerCollator(processor, max_length=model.config.max_position_embeddings)

    with pytest.raises(ValueError, match=r"Every image of this batch \(8\) failed to load.*SkipFailedImages"):
        collator([train[i] for i in range(8)])
    kept = loadable_subset(validation)
    assert len(kept) == 6 and [r.image_id for r in kept.records] == [
        r.image_id for i, r in enumerate(validation.records) if i not in (2, 5)
    ]
    assert train.skipped.as_dict()["failed_to_load"] == 8 and validation.skipped.as_dict()["failed_to_load"] == 2
    training_set = SkipFailedImages(train)
    trainer = Seq2SeqTrainer(
        model=model,
        args=trainer_args(tmp_path / "run", max_steps=2),
        train_dataset=training_set,
        eval_dataset=kept,
        data_collator=collator,
        compute_metrics=CaptionMetrics(processor, kept, meteor=False),
        callbacks=[CaptionTrainingCallback(collator)],
    )
    assert trainer.train().global_step == 2  # one epoch: a batch of 8 broken images was refilled, not dropped
    assert trainer.evaluate()["eval_num_images"] == 6
    # Each broken image was decoded (and counted) once more by the training set, then remembered.
    assert training_set.failed_indices == set(range(8)) and train.skipped.as_dict()["failed_to_load"] == 16

    # An evaluation set with a failing image would misalign captions and references: a sentence, not wrong numbers.
    trainer.compute_metrics = CaptionMetrics(processor, validation, meteor=False)
    trainer.eval_dataset = validation
    with pytest.raises(ValueError, match=r"captions for 6 images but the evaluation set has 8.*loadable_subset"):
        trainer.evaluate()


def test_trainer_collator_refuses_several_captions_per_image(tokenizer):
    """nn.DataParallel (the Trainer on several GPUs without torchrun) splits each tensor in equal chunks, which would
    cut an image's captions away from it: the Trainer's collator keeps one caption per row."""
    config = CaptionerConfig.from_preset("tiny", tokenizer=tokenizer)
    processor = CaptionerProcessor(build_image_processor(config), tokenizer)
    with pytest.raises(ValueError, match=r"captions_per_image > 1 is for train\.py"):
        TrainerCollator(processor, captions_per_image=5)


def test_trainer_compiles_and_checkpoints_layers_through_training_arguments(tokenizer, tmp_path):
    """The Trainer's own switches reach the captioner: `torch_compile` (here with the aot_eager backend, inductor's
    C++ compilation takes a minute on two CPU cores) and gradient (activation) checkpointing, non-reentrant, train
    with the plain run's losses, and the saved model loads."""
    from torch._dynamo.utils import counters
    from transformers import AutoModel

    splits = load_caption_splits("synthetic", sizes=(32, 8, 8))
    runs = {}
    for name, fast in (("plain", {}), ("fast", FAST_TRAINING)):
        model = tiny_model("resnet", "transformer", tokenizer)
        processor = CaptionerProcessor(build_image_processor(model.config), tokenizer)
        collator = TrainerCollator(processor, max_length=model.config.max_position_embeddings)
        torch._dynamo.reset()
        counters.clear()
        trainer = Seq2SeqTrainer(
            model=model,
            args=trainer_args(tmp_path / name, max_steps=2, logging_steps=1, **fast),
            train_dataset=SkipFailedImages(splits["train"]),
            data_collator=collator,
            callbacks=[CaptionTrainingCallback(collator)],
        )
        trainer.train()
        runs[name] = [record["loss"] for record in trainer.state.log_history if "loss" in record]
        trainer.save_model(tmp_path / name / "model")
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] >= 1
    torch._dynamo.reset()
    assert len(runs["fast"]) == 2 and runs["fast"] == pytest.approx(runs["plain"], rel=1e-5)
    assert getattr(model, f"is_{CHECKPOINTING}")
    saved = AutoModel.from_pretrained(tmp_path / "fast" / "model")
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[name], msg=name)


# transformers 5.2x renamed gradient checkpointing to activation checkpointing (the old names warn until v6).
CHECKPOINTING = next(
    name
    for name in ("activation_checkpointing", "gradient_checkpointing")
    if name in {field.name for field in dataclasses.fields(Seq2SeqTrainingArguments)}
)
FAST_TRAINING = {
    "torch_compile": True,
    "torch_compile_backend": "aot_eager",
    CHECKPOINTING: True,
    f"{CHECKPOINTING}_kwargs": {"use_reentrant": False},
}
