"""Sharing a trained captioner: the model card and the upload that push_to_hub.py runs."""
