"""Seq2SeqTrainer trains and evaluates captioners (generated captions, predict_with_generate) with the package's
collator, for the Transformer and the Show-Attend-Tell decoders."""

import numpy as np
import pytest
from conftest import tiny_model
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from captioning.collator import CaptionCollator, model_inputs
from captioning.data import load_caption_splits
from modeling_captioner import CaptionerProcessor, build_image_processor


@pytest.mark.parametrize("decoder", ["transformer", "lstm"])
def test_seq2seq_trainer_trains_and_evaluates_generated_captions(decoder, tokenizer, tmp_path):
    splits = load_caption_splits("synthetic", sizes=(32, 8, 8))
    model = tiny_model("resnet", decoder, tokenizer)
    processor = CaptionerProcessor(build_image_processor(model.config), tokenizer)
    collator = CaptionCollator(processor, max_length=model.config.max_position_embeddings)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = {}

    def compute_metrics(prediction):
        ids = np.where(prediction.predictions < 0, tokenizer.pad_token_id, prediction.predictions)
        seen["ids"] = ids
        captions = processor.batch_decode(ids, skip_special_tokens=True)
        return {"captions": len(captions)}

    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        remove_unused_columns=False,
        use_cpu=True,
        save_strategy="no",
        predict_with_generate=True,
        generation_num_beams=3,
        generation_max_length=7,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=lambda items: model_inputs(collator(items)),
        compute_metrics=compute_metrics,
    )
    assert trainer.train().global_step == 3
    assert any(not p.detach().equal(before[n]) for n, p in model.named_parameters())
    metrics = trainer.evaluate()
    assert metrics["eval_captions"] == 8 and np.isfinite(metrics["eval_loss"])
    # generation_max_length is honoured: the Trainer pads predictions to the model's own max_length, but nothing
    # beyond the 7th position was generated.
    assert seen["ids"].shape[0] == 8 and (seen["ids"][:, 7:] == tokenizer.pad_token_id).all()
