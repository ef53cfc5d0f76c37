"""Training loss of a captioner: token cross-entropy with label smoothing, plus an optional EOS-suppression term
against too-short captions."""

import torch
import torch.nn.functional as F


def caption_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    eos_token_id: int | None = None,
    eos_min_length: int = 0,
    eos_penalty: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """
    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, length, vocab_size)`): decoder outputs.
        labels (`torch.LongTensor` of shape `(batch_size, length)`): caption ids ending in EOS, -100 on padding.
        label_smoothing: spread this much probability mass over the vocabulary (Szegedy et al., 2016).
        eos_token_id, eos_min_length, eos_penalty: EOS suppression, as one of the seed systems used against
            captions that stop early: before position `eos_min_length`, add `eos_penalty * -log(1 - p(EOS))` where
            the reference does not end there.

    Returns: the loss and its parts (detached 0-dim tensors on the loss's device, for logging: reading one is a host
    synchronisation, so read them at logging steps only).
    """
    vocab_size = logits.shape[-1]
    cross_entropy = F.cross_entropy(
        logits.float().reshape(-1, vocab_size), labels.reshape(-1), ignore_index=-100, label_smoothing=label_smoothing
    )
    parts = {"cross_entropy": cross_entropy.detach()}
    if eos_penalty <= 0 or eos_min_length <= 0:
        return cross_entropy, parts
    if eos_token_id is None:
        raise ValueError("EOS suppression needs eos_token_id.")
    length = labels.shape[1]
    early = torch.arange(length, device=labels.device) < eos_min_length
    where = early & (labels != -100) & (labels != eos_token_id)
    p_eos = logits.float().softmax(-1)[..., eos_token_id]
    # A masked mean, not `p_eos[where]`: boolean indexing (like asking `where.any()`) waits for the device to say how
    # many positions there are. Without an early position the penalty is 0.
    penalties = -torch.log1p(-p_eos.clamp(max=1 - 1e-6))
    suppression = torch.where(where, penalties, 0.0).sum() / where.sum().clamp(min=1)
    parts["eos_suppression"] = suppression.detach()
    return cross_entropy + eos_penalty * suppression, parts
