"""The AGHMN model, its variants and batching."""
from .aghmn import AGHMN, AGHMNConfig, AttentionGRU, BiGRUReader, CNNReader, SentenceReader
from .batching import Batch, dialogue_windows, make_batch, pad_token_ids

__all__ = ["AGHMN", "AGHMNConfig", "AttentionGRU", "BiGRUReader", "CNNReader", "SentenceReader", "Batch",
           "dialogue_windows", "make_batch", "pad_token_ids"]
