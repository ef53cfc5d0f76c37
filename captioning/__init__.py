"""captioner's workshop: everything train.py, the Trainer path, the `captioner` command and push_to_hub.py share.

Subpackages, each importing only those before it: `data` (records, formats, web streams) → `evaluation` (metrics,
diagnostics, the evaluation command) → `training` (loop pieces, checkpoints, unfreezing, collator, losses) → `hub`
(model card, upload) → `cli` (the `captioner` subcommands). `fast_decoding` sits beside the model, below them all.
The model itself lives in `modeling_captioner`, which never imports this package.
"""

from captioning import _moved

_moved.install()
