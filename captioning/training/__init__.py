"""What train.py and the Trainer path share: the loop pieces, checkpoints, unfreezing, feature cache, losses, collator,
augmentation, time budget and reports."""
