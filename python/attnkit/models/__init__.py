"""attnkit.models -- pretrained Transformers from Hugging Face-layout checkpoints (config.json +
model.safetensors), read with NumPy only and run on attnkit.nn.

    BertModel.from_pretrained(directory)          BERT, RoBERTa, XLM-RoBERTa encoders
    GPT2LMHeadModel.from_pretrained(directory)    GPT-2 decoders with KV-cache generation
"""

from .bert import BertConfig, BertModel
from .gpt2 import GPT2Config, GPT2LMHeadModel

__all__ = ["BertConfig", "BertModel", "GPT2Config", "GPT2LMHeadModel"]
