"""What 🤗 Seq2SeqTrainer needs to train and score a captioner the way train.py does: a collator that returns model
inputs, datasets whose batches are never empty, compute_metrics on generated captions, and a callback that moves the
staged-unfreezing schedule and the collator's reference choice along with the epochs (also after a resume)."""

import logging
import math
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from captioning.evaluation.diagnostics import caption_diagnostics
from captioning.evaluation.metrics import compute_caption_metrics
from captioning.training.collator import CaptionCollator, model_inputs
from captioning.training.unfreezing import UnfreezingSchedule

logger = logging.getLogger(__name__)


class TrainerCollator(CaptionCollator):
    """
    [`CaptionCollator`] for the 🤗 Trainer: returns only what the model's forward takes (`pixel_values`, `labels`,
    `decoder_attention_mask`), so `remove_unused_columns` can stay off and nothing else reaches the model.

    Items that are `None` (images that failed to load) are left out of the batch; wrap the training set in
    [`SkipFailedImages`] so a batch can never be empty.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.captions_per_image > 1:
            # The Trainer may split a batch across GPUs with nn.DataParallel, tensor by tensor in equal chunks, which
            # would hand an image's captions to another image's replica.
            raise ValueError(
                "captions_per_image > 1 is for train.py; with the Trainer, train on one caption per image per epoch "
                "or on every pair (CaptionPairs)."
            )

    def __call__(self, items) -> dict[str, torch.Tensor]:
        batch = super().__call__(items)
        if "labels" not in batch:
            raise ValueError(
                f"Every image of this batch ({batch['num_dropped']}) failed to load, so there is nothing to train on; "
                "wrap the dataset in captioning.training.trainer.SkipFailedImages (training) or loadable_subset (evaluation)."
            )
        return model_inputs(batch)


class SkipFailedImages(torch.utils.data.Dataset):
    """
    A caption dataset whose items always hold an image: one that fails to load is replaced by the next loadable
    item, so the Trainer never gets an empty batch. Each failure is warned about and counted in `dataset.skipped` as
    in train.py, once per process: a failed index is remembered (`failed_indices`) and not decoded again. For
    training sets; evaluation needs [`loadable_subset`], since a replaced image would be scored against another
    image's references.
    """

    def __init__(self, dataset):
        if len(dataset) == 0:
            raise ValueError("SkipFailedImages got an empty dataset.")
        self.dataset = dataset
        self.failed_indices: set[int] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.dataset)):
            candidate = (index + offset) % len(self.dataset)
            if candidate in self.failed_indices:
                continue
            item = self.dataset[candidate]
            if item is not None:
                return item
            self.failed_indices.add(candidate)
        raise ValueError(f"No image of the {len(self.dataset)} in this dataset can be loaded; see the warnings above.")


def loadable_subset(dataset):
    """
    The items of a `CaptionDataset` whose images load, in order (each image is decoded once to find out; failures
    are warned about and counted in `dataset.skipped`). Row i of the Trainer's predictions is then item i, which is
    what [`CaptionMetrics`] relies on.
    """
    keep = [index for index in range(len(dataset)) if dataset[index] is not None]
    if not keep:
        raise ValueError(f"No image of the {len(dataset)} in the {dataset.split} split can be loaded.")
    if len(keep) < len(dataset):
        logger.warning(f"{len(dataset) - len(keep)} of {len(dataset)} {dataset.split} images fail to load: left out.")
    return dataset.subset(keep)


class CaptionMetrics:
    """
    `compute_metrics` for `Seq2SeqTrainer(..., args=Seq2SeqTrainingArguments(predict_with_generate=True))`: decodes
    the generated ids and scores them against every reference of each image, with the same BLEU-1..4, METEOR,
    ROUGE-L and CIDEr-D as train.py, beside the captions' degeneration diagnostics
    ([`captioning.evaluation.diagnostics.caption_diagnostics`]; without `truncated`, which needs the EOS information
    `compute_metrics` does not get).

    Args:
        processor (`CaptionerProcessor`): decodes the generated ids.
        eval_dataset: the evaluation set given to the Trainer, in the same order (see [`loadable_subset`]).
        meteor (`bool`, *optional*, defaults to `True`): METEOR needs Java (about 5 s of jar start-up per call).
    """

    def __init__(self, processor, eval_dataset, meteor: bool = True):
        self.processor = processor
        self.references = [list(eval_dataset.records[i].captions) for i in range(len(eval_dataset))]
        self.meteor = meteor

    def __call__(self, prediction) -> dict[str, float | int]:

        ids = prediction.predictions
        ids = ids[0] if isinstance(ids, tuple) else ids
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"CaptionMetrics needs generated token ids of shape (images, length), got {ids.dtype} {ids.shape}; "
                "set predict_with_generate=True in Seq2SeqTrainingArguments."
            )
        if len(ids) != len(self.references):
            raise ValueError(
                f"Got captions for {len(ids)} images but the evaluation set has {len(self.references)}: an image "
                "failed to load during evaluation. Pass the evaluation set through captioning.training.trainer.loadable_subset."
            )
        # The Trainer pads generated ids across batches with -100, which the tokenizer cannot decode.
        ids = np.where(ids < 0, self.processor.tokenizer.pad_token_id, ids)
        captions = self.processor.batch_decode(ids, skip_special_tokens=True)
        metrics = compute_caption_metrics(captions, self.references, meteor=self.meteor)
        metrics.update(caption_diagnostics(captions))
        return {name: value for name, value in metrics.items() if value is not None}


class CaptionTrainingCallback(TrainerCallback):
    """
    Moves a captioner's training along with the Trainer's epochs, as train.py does:

    - the collator picks each image's reference for the current epoch (one reference per image per epoch);
    - with an [`UnfreezingSchedule`], only the parts of the epoch's stage train, and a frozen backbone
      keeps its BatchNorm statistics (it runs in eval mode although the Trainer calls `model.train()` every step).

    Resuming from a checkpoint (`trainer.train(resume_from_checkpoint=...)`) resumes in the checkpoint's stage.
    Frozen parameters get no gradient, so the Trainer's optimizer (built over every parameter) leaves them unchanged
    until their stage; for per-group learning rates (`schedule.lr_scales`) pass
    `optimizers=(captioning.training.unfreezing.build_adamw(captioning.training.unfreezing.optimizer_groups(...), device), None)`.

    Args:
        collator (`CaptionCollator`, *optional*): the Trainer's data collator.
        schedule (`UnfreezingSchedule`, *optional*): which parts of the model train from which epoch.
    """

    def __init__(self, collator: CaptionCollator | None = None, schedule: UnfreezingSchedule | None = None):
        self.collator = collator
        self.schedule = schedule
        self.stage: int | None = None
        self._hook = None

    @staticmethod
    def current_epoch(state) -> int:
        # state.epoch is fractional within an epoch (1.5 = halfway through the second); a small tolerance absorbs the
        # float sum at epoch ends.
        return math.floor((state.epoch or 0.0) + 1e-6)

    def _enter_epoch(self, model, state) -> None:
        epoch = self.current_epoch(state)
        if self.collator is not None:
            self.collator.set_epoch(epoch)
        if self.schedule is None or model is None:
            return
        stage = self.schedule.stage_index(epoch)
        if stage != self.stage:
            parts = self.schedule.apply(model, epoch)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            logger.info(f"epoch {epoch}: unfreezing stage {stage + 1} ({', '.join(parts)}; {trainable:,} trainable)")
            self.stage = stage

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.stage = None
        self._enter_epoch(model, state)
        if self.schedule is not None and model is not None:
            self._hook = model.encoder.backbone.register_forward_pre_hook(_frozen_backbone_in_eval_mode)

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self._enter_epoch(model, state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def _frozen_backbone_in_eval_mode(backbone, args) -> None:
    if backbone.training and not any(parameter.requires_grad for parameter in backbone.parameters()):
        backbone.eval()


__all__ = ["CaptionMetrics", "CaptionTrainingCallback", "SkipFailedImages", "TrainerCollator", "loadable_subset"]
