"""attnkit.models -- pretrained Transformers from Hugging Face-layout checkpoints (config.json +
model.safetensors), read with NumPy only and run on attnkit.nn.

    BertModel.from_pretrained(directory)          BERT, RoBERTa, XLM-RoBERTa encoders
    GPT2LMHeadModel.from_pretrained(directory)    GPT-2 decoders with KV-cache generation
    LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM.from_pretrained(directory)
    MarianMTModel / BartForConditionalGeneration / MBartForConditionalGeneration /
    M2M100ForConditionalGeneration (NLLB) / T5ForConditionalGeneration.from_pretrained(directory)
                                                  encoder-decoders on one stack, generate as in transformers
    from_pretrained(directory)                    the class named by config.json's model_type
"""

from .bert import BertConfig, BertModel
from .gpt2 import GPT2Config, GPT2LMHeadModel
from .llama import LlamaConfig, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM
from .seq2seq import (BartForConditionalGeneration, M2M100ForConditionalGeneration, MarianMTModel,
                      MBartForConditionalGeneration, Seq2SeqConfig, Seq2SeqLM, T5ForConditionalGeneration)

__all__ = ["BertConfig", "BertModel", "GPT2Config", "GPT2LMHeadModel", "LlamaConfig", "LlamaForCausalLM",
           "Qwen2ForCausalLM", "MistralForCausalLM", "Seq2SeqConfig", "Seq2SeqLM", "MarianMTModel",
           "BartForConditionalGeneration", "MBartForConditionalGeneration", "M2M100ForConditionalGeneration",
           "T5ForConditionalGeneration", "from_pretrained"]

_BY_MODEL_TYPE = {"bert": BertModel, "roberta": BertModel, "xlm-roberta": BertModel, "gpt2": GPT2LMHeadModel,
                  "llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "mistral": MistralForCausalLM,
                  "marian": MarianMTModel, "bart": BartForConditionalGeneration,
                  "mbart": MBartForConditionalGeneration, "m2m_100": M2M100ForConditionalGeneration,
                  "t5": T5ForConditionalGeneration}


def from_pretrained(directory, **kwargs):
    """Load a Hugging Face checkpoint directory with the class its config.json's ``model_type`` names.

    bert, roberta, xlm-roberta: BertModel; gpt2: GPT2LMHeadModel; llama, qwen2, mistral: LlamaForCausalLM and
    its subclasses; marian, bart, mbart, m2m_100, t5: the Seq2SeqLM families.

    Args:
        directory (str or os.PathLike): the checkpoint (config.json, model.safetensors or its shards).
        **kwargs (Any): the class's ``from_pretrained`` options (dtype; quantize, group_size, quantize_lm_head for
            the decoder-only and BERT families).

    Returns:
        model (BertModel or GPT2LMHeadModel or LlamaForCausalLM or Seq2SeqLM): The model.

    Raises:
        ValueError: a model_type attnkit does not support (the message lists those it does), and whatever the
            class's from_pretrained raises.

    Examples:
        >>> import json, os, tempfile
        >>> from attnkit.models import from_pretrained
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with open(os.path.join(d, "config.json"), "w") as f:
        ...         json.dump({"model_type": "gptj"}, f)
        ...     from_pretrained(d)
        Traceback (most recent call last):
        ValueError: config.json: field 'model_type' = 'gptj' is not supported (supported: ['bart', ...])
    """
    from ._checkpoint import load_config
    mt = load_config(directory).get("model_type")
    if mt not in _BY_MODEL_TYPE:
        raise ValueError(f"config.json: field 'model_type' = {mt!r} is not supported "
                         f"(supported: {sorted(_BY_MODEL_TYPE)})")
    return _BY_MODEL_TYPE[mt].from_pretrained(directory, **kwargs)
