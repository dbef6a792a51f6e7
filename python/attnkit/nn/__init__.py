"""attnkit.nn -- the Transformer of "Attention Is All You Need" on attnkit's C++ kernels.

One class per box of the paper's Figure 1 (weights are NumPy arrays held by the modules):

    LayerNorm, FeedForward, MultiHeadAttention, Embeddings, Generator     the boxes
    RMSNorm, RelativePositionBias                                         T5's norm and position bias
    EncoderLayer, DecoderLayer, Encoder, Decoder                          the stacks
    Transformer, TransformerConfig                                        the encoder-decoder
    KVCache, AttentionMask                                                incremental decoding, masks
    StateDict                                                             named tensors of a checkpoint
    greedy_search, beam_search, GenerationConfig                          generation loops (Hugging Face's)
"""

from .cache import KVCache, LayerKVCache
from .generation import GenerationConfig, beam_search, greedy_search
from .embeddings import Embeddings, Generator, RelativePositionBias, sinusoidal_positional_encoding
from .layers import FeedForward, LayerNorm, MultiHeadAttention, RMSNorm
from .masks import AttentionMask
from .module import Module, StateDict
from .stacks import Decoder, DecoderLayer, Encoder, EncoderLayer
from .transformer import Transformer, TransformerConfig

__all__ = [
    "Module", "LayerNorm", "FeedForward", "MultiHeadAttention", "AttentionMask", "Embeddings", "Generator",
    "sinusoidal_positional_encoding", "EncoderLayer", "DecoderLayer", "Encoder", "Decoder", "Transformer",
    "TransformerConfig", "KVCache", "LayerKVCache", "StateDict", "greedy_search", "beam_search",
    "GenerationConfig", "RMSNorm", "RelativePositionBias",
]
