"""Floor 3: tokenizers and conditioning encoders; every encoder returns (pooled, tokens, mask)."""

from t2i.encoders.minilm import MiniLMConfig, MiniLMEncoder
from t2i.encoders.text import TextEncoder, TextEncoderConfig
from t2i.encoders.tokenizer import WordTokenizer
from t2i.encoders.wordpiece import WordPieceTokenizer

__all__ = ["MiniLMConfig", "MiniLMEncoder", "TextEncoder", "TextEncoderConfig", "WordPieceTokenizer", "WordTokenizer"]
