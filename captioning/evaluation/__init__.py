"""Scoring captions: the COCO metrics (`metrics`), caption diagnostics, the evaluation command (`command`) and the 🤗
evaluate module (`caption_metric/`)."""
