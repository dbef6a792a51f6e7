"""attnkit.nn -- the Transformer of "Attention Is All You Need" on attnkit's C++ kernels.

One class per box of the paper's Figure 1 (weights are NumPy arrays held by the modules):

    LayerNorm, RMSNorm, FeedForward, MultiHeadAttention    the boxes                          layers.py
    Embeddings, Generator, RelativePositionBias           embeddings, output, T5's bias      embeddings.py
    EncoderLayer, DecoderLayer, Encoder, Decoder          the stacks                         stacks.py
    Transformer, TransformerConfig                        the encoder-decoder                transformer.py
    AttentionMask, KVCache                                masks, incremental decoding        masks.py, cache.py
    Module, StateDict                                     the base, named checkpoint tensors module.py
    greedy_search, beam_search, GenerationConfig          generation loops (Hugging Face's)  generation.py
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
