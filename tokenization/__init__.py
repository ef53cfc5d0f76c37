"""Caption vocabulary: reads caption files and builds a pruned BERT WordPiece tokenizer loadable by AutoTokenizer."""

from .builder import (
    DEFAULT_MODEL_MAX_LENGTH,
    DEFAULT_VOCAB_SIZE,
    SPECIAL_TOKENS,
    build_tokenizer,
    count_pieces,
    load_base_vocab,
    packaged_vocab_text,
    unk_rate,
)
from .captions import SUPPORTED_EXTENSIONS, read_captions

__all__ = [
    "DEFAULT_MODEL_MAX_LENGTH",
    "DEFAULT_VOCAB_SIZE",
    "SPECIAL_TOKENS",
    "SUPPORTED_EXTENSIONS",
    "build_tokenizer",
    "count_pieces",
    "load_base_vocab",
    "packaged_vocab_text",
    "read_captions",
    "unk_rate",
]
