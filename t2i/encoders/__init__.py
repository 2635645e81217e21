"""Floor 3: tokenizers and conditioning encoders; every encoder returns (pooled, tokens, mask)."""

from t2i.encoders.text import TextEncoder, TextEncoderConfig
from t2i.encoders.tokenizer import WordTokenizer

__all__ = ["TextEncoder", "TextEncoderConfig", "WordTokenizer"]
