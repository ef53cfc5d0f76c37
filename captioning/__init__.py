"""captioner's workshop: what the demo, train.py and the tests share (rendered scenes, small training loops)."""
