"""Reading Hugging Face-layout checkpoints without torch: config.json + model.safetensors as NumPy arrays.

A checkpoint directory holds ``config.json`` and either ``model.safetensors`` or the shards listed in
``model.safetensors.index.json``. Tensors are read with ``safetensors.numpy.load_file`` into a plain dict;
``attnkit.nn.StateDict`` hands them out by name with their expected shapes, so that a missing or misshapen
tensor is reported by its full name, and :func:`field` does the same for configuration fields.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

__all__ = ["load_config", "load_tensors", "load_pretrained", "field", "read_fields", "check_fields", "CheckpointConfig",
           "StateDictModel", "Pretrained", "SIZE_MAX", "SPECIAL_TOKEN_IDS", "special_token_ids"]

_MISSING = object()


def _read_json(path: str, what: str):
    """The JSON at ``path``; FileNotFoundError/ValueError naming the path and what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: no {what} in the checkpoint directory") from e
    except IsADirectoryError as e:
        raise ValueError(f"{path}: is a directory, expected the file {what}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:                       # a symlink loop, no permission, ...
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from e


def _directory(directory) -> str:
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        what = "does not exist" if not os.path.lexists(directory) else "is not a directory"
        raise (FileNotFoundError if what == "does not exist" else ValueError)(
            f"{directory}: {what}; expected a checkpoint directory (config.json + model.safetensors)")
    return directory


def load_config(directory) -> Dict[str, Any]:
    path = os.path.join(_directory(directory), "config.json")
    config = _read_json(path, "config.json")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


# safetensors dtypes -> NumPy; BF16 is ml_dtypes.bfloat16 (safetensors' NumPy API cannot make it)
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U8": "u1", "BOOL": "?"}


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """A .safetensors file read directly (8-byte header length, JSON header, raw little-endian data), for
    files with bfloat16 tensors; ValueError naming the file and the tensor for anything malformed."""
    import ml_dtypes
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: not a valid safetensors file (shorter than its 8-byte header length)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"{path}: not a valid safetensors file (header of {n} bytes in a {len(data)}-byte file)")
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid safetensors file (header is not JSON: {e})") from e
    body = memoryview(data)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: tensor '{name}': malformed header entry {info!r}") from e
        dt = np.dtype(ml_dtypes.bfloat16) if code == "BF16" else np.dtype(_ST_DTYPES[code]) if code in _ST_DTYPES else None
        if dt is None:
            raise ValueError(f"{path}: tensor '{name}': unsupported dtype {code!r}")
        count = int(np.prod(shape, dtype=np.int64))
        if not (0 <= begin <= end <= len(body)) or end - begin != count * dt.itemsize:
            raise ValueError(f"{path}: tensor '{name}': data offsets [{begin}, {end}) do not hold {shape} of {code} "
                             f"in a {len(body)}-byte data section")
        out[name] = np.frombuffer(body[begin:end], dtype=dt).reshape(shape).copy()
    return out


def _has_bfloat16(path: str) -> bool:
    """Whether the safetensors file at ``path`` lists a BF16 tensor (its header only is read)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            return n < (1 << 27) and b'"BF16"' in f.read(n)
    except OSError:
        return False


def _load_safetensors(path: str) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    if _has_bfloat16(path):
        return _read_safetensors(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, expected a .safetensors file")
    if os.path.lexists(path) and not os.path.exists(path):
        raise ValueError(f"{path}: cannot be read (a dangling symlink or a symlink loop)")
    try:
        return dict(load_file(path))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: no such file") from e
    except OSError as e:                       # a symlink loop, no permission, ...
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from e
    except Exception as e:                     # safetensors' own errors: truncated, garbage header, ...
        raise ValueError(f"{path}: not a valid safetensors file ({type(e).__name__}: {e})") from e


def load_tensors(directory) -> Dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` (or of its shards) as NumPy arrays."""
    try:
        import safetensors.numpy  # noqa: F401
    except ImportError as e:  # pragma: no cover - safetensors is a test dependency
        raise ImportError("reading checkpoints needs the 'safetensors' package (pip install safetensors)") from e
    directory = _directory(directory)
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.lexists(single):
        return _load_safetensors(single)
    if os.path.lexists(index):
        content = _read_json(index, "model.safetensors.index.json")
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: expected a JSON object with a non-empty 'weight_map' (tensor name -> shard file)")
        shards = set(weight_map.values())
        bad = [s for s in shards if not isinstance(s, str) or os.path.basename(s) != s or s in ("", ".", "..")]
        if bad:
            raise ValueError(f"{index}: 'weight_map' names shards that are not file names in the directory: {bad[:3]}")
        tensors: Dict[str, np.ndarray] = {}
        for shard in sorted(shards):
            tensors.update(_load_safetensors(os.path.join(directory, shard)))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ValueError(f"{index}: tensors listed in 'weight_map' are in no shard: {missing[:3]}")
        return tensors
    raise FileNotFoundError(f"{directory}: no model.safetensors (or model.safetensors.index.json); "
                            f"save with save_pretrained(..., safe_serialization=True)")


def load_pretrained(directory) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    return load_config(directory), load_tensors(directory)


# Sizes in a config (widths, lengths, counts) are at most this: a larger one is a corrupt file, not a model.
SIZE_MAX = 2**31 - 1


def field(config: Dict[str, Any], name: str, kind, default: Any = _MISSING, *, choices: Optional[Iterable] = None,
          where: str = "config.json", low=None, high=None):
    """config[name] checked to be of ``kind`` (and among ``choices``, and within [low, high]; floats also
    finite); KeyError/ValueError naming the field and ``where`` (the file)."""
    if name not in config or config[name] is None:
        if default is _MISSING:
            raise KeyError(f"{where}: missing field '{name}'")
        return default
    value = config[name]
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        try:
            value = float(value) if ok else value
        except OverflowError:                  # an int beyond float's range
            ok = False
        ok = ok and math.isfinite(value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        want = "a finite number" if kind is float else kind.__name__
        raise ValueError(f"{where}: field '{name}' should be {want}, got {value!r}")
    if choices is not None and value not in choices:
        raise ValueError(f"{where}: field '{name}' = {value!r} is not supported (supported: {sorted(choices)})")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "" if low is None else f"{low} <= "
        hi = "" if high is None else f" <= {high}"
        raise ValueError(f"{where}: field '{name}' = {value!r} is out of range (expected {lo}{name}{hi})")
    return value


# Special token ids are metadata for generation and tokenizers, not part of the network: transformers keeps
# whatever a config says (GPT2Config(vocab_size=1000) still writes bos/eos_token_id 50256) and loads it.
SPECIAL_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "sep_token_id",
                     "cls_token_id", "mask_token_id", "unk_token_id")


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def special_token_ids(config: Dict[str, Any], vocab_size: int, where: str, names: Iterable[str] = SPECIAL_TOKEN_IDS
                      ) -> Dict[str, Any]:
    """The special token ids of ``config`` (those of ``names`` it has), with every id outside [0, vocab_size) taken
    out: None in place of a single id, dropped from a list (None when none is left). One warning names each such
    field and ``where``; the id is otherwise ignored (generation never produces a token outside the vocabulary).
    Values of other types are returned as they are, for the family's field checks to refuse where it reads them."""
    kept, outside = {}, []
    for name in names:
        if name not in config:
            continue
        value = config[name]
        if _is_id(value) and not 0 <= value < vocab_size:
            outside.append(f"'{name}' = {value}")
            value = None
        elif isinstance(value, list) and value and all(_is_id(v) for v in value):
            inside = [v for v in value if 0 <= v < vocab_size]
            if len(inside) < len(value):
                outside.append(f"'{name}' = {value}")
                value = inside or None
        kept[name] = value
    if outside:
        warnings.warn(f"{where}: special token ids outside the vocabulary [0, {vocab_size}) are ignored: field "
                      + ", field ".join(outside), UserWarning, stacklevel=2)
    return kept


def read_fields(config: Dict[str, Any], spec: Dict[str, tuple], defaults: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Every field of ``spec`` (name -> (kind, low, high[, choices])) read from ``config`` with :func:`field`;
    a field without an entry in ``defaults`` is required."""
    values = {}
    for name, (kind, low, high, *choices) in spec.items():
        args = (defaults[name],) if name in defaults else ()
        values[name] = field(config, name, kind, *args, choices=choices[0] if choices else None, where=where,
                             low=low, high=high)
    return values


def check_fields(obj, spec: Dict[str, tuple], where: str) -> None:
    """Check a config dataclass's attributes against ``spec``: name -> (kind, low, high[, choices])."""
    values = vars(obj)
    for name, (kind, low, high, *choices) in spec.items():
        if values.get(name) is not None:
            field(values, name, kind, choices=choices[0] if choices else None, where=where, low=low, high=high)


class CheckpointConfig:
    """``from_dict``, the one way every family's config dataclass reads a config.json; a family implements
    ``_read(config, where)``."""

    @classmethod
    def from_dict(cls, config: dict, *, where: str = "config.json"):
        """Read a Hugging Face config.json dict; a setting attnkit cannot compute raises, naming the field.

        Args:
            config: the parsed config.json.
            where: what error messages name (the file).

        Returns:
            config (BertConfig or GPT2Config or LlamaConfig or Seq2SeqConfig): of the class it is called on, the
                family's settings filled in.

        Raises:
            KeyError: a missing field. ValueError: a field out of range, unsupported (a decoder BERT, another
                activation, a sliding window on Qwen2, ...) or inconsistent (heads that do not divide the width),
                naming it.

        Examples:
            >>> from attnkit.models import LlamaConfig
            >>> hf = {"model_type": "mistral", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            ...       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 32}
            >>> c = LlamaConfig.from_dict(hf)
            >>> c.head_dim, c.sliding_window
            (16, 32)
        """
        return cls._read(config, where)


class StateDictModel:
    """The constructors every model family shares: ``from_state_dict`` (a Hugging Face state dict) and
    ``random_state_dict`` / ``from_config`` (random weights in that layout). A family implements
    ``_from_tensors(tensors, config, dtype, origin)`` and ``_random_tensors(config, rng, std)``."""

    @classmethod
    def from_state_dict(cls, tensors: dict, config, *, dtype=np.float32, origin: str = "state dict"):
        """Build the model from a state dict in its family's Hugging Face layout (names with or without the
        checkpoint's prefix: 'bert.' or 'roberta.', 'transformer.', 'model.').

        Args:
            tensors: names to NumPy arrays or torch tensors (a quantized checkpoint's q and scales too).
            config (BertConfig or GPT2Config or LlamaConfig or Seq2SeqConfig): the hyperparameters the tensors
                were made for.
            dtype (numpy.dtype or str): float32, float64, float16 or bfloat16.
            origin: what error messages name (a file path).

        Returns:
            model (BertModel or GPT2LMHeadModel or LlamaForCausalLM or Seq2SeqLM): of the class it is called on
                (Seq2SeqLM: the config's family class).

        Raises:
            KeyError: a missing tensor. ValueError: a tensor of another shape, more layers than configured.

        Examples:
            >>> from attnkit.models import BertConfig, BertModel
            >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
            >>> tensors = {"bert." + k: v for k, v in BertModel.random_state_dict(cfg, rng=0).items()}
            >>> BertModel.from_state_dict(tensors, cfg).config.hidden_size
            16
        """
        return cls._from_tensors(tensors, config, dtype, origin)

    @classmethod
    def random_state_dict(cls, config, *, rng=None, std: float = 0.02) -> Dict[str, np.ndarray]:
        """Random tensors under the names and shapes a checkpoint of ``config`` has: weights N(0, std), norms
        at 1 (and 0).

        Args:
            config (BertConfig or GPT2Config or LlamaConfig or Seq2SeqConfig): the hyperparameters.
            rng (int or numpy.random.Generator or None): the randomness.
            std: the weights' standard deviation.

        Returns:
            Checkpoint names to float32 arrays, as [from_state_dict][attnkit.models.BertModel.from_state_dict]
                reads them (and a model.safetensors holds them).
        """
        return cls._random_tensors(config, np.random.default_rng(rng), std)

    @classmethod
    def from_config(cls, config, *, rng=None, std: float = 0.02, dtype=np.float32):
        """A model with random weights N(0, std) (norms at 1, 0), built through the checkpoint layout.

        Args:
            config (BertConfig or GPT2Config or LlamaConfig or Seq2SeqConfig): the hyperparameters.
            rng (int or numpy.random.Generator or None): the randomness.
            std: the weights' standard deviation.
            dtype (numpy.dtype or str): float32, float64, float16 or bfloat16.

        Returns:
            model (BertModel or GPT2LMHeadModel or LlamaForCausalLM or Seq2SeqLM): of the class it is called on
                (Seq2SeqLM: the config's family class).

        Examples:
            >>> import numpy as np
            >>> from attnkit.models import LlamaConfig, LlamaForCausalLM
            >>> cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            ...                   num_attention_heads=2, num_key_value_heads=1, head_dim=16)
            >>> LlamaForCausalLM.from_config(cfg, rng=0, dtype=np.float64).dtype
            dtype('float64')
        """
        return cls.from_state_dict(cls.random_state_dict(config, rng=rng, std=std), config, dtype=dtype,
                                   origin="random weights")


class Pretrained(StateDictModel):
    """``from_pretrained(directory)`` for a model class with a ``config_class`` (a CheckpointConfig) and the
    StateDictModel constructors; ``save_pretrained(directory)`` for one with ``_checkpoint_tensors()`` (its
    weights under the checkpoint's names)."""

    config_class: Any = None

    @classmethod
    def from_pretrained(cls, directory, *, dtype=np.float32, quantize: Optional[str] = None,
                        group_size: Optional[int] = None, quantize_lm_head=None):
        """Load a Hugging Face checkpoint directory: config.json and model.safetensors (or its shards).

        A checkpoint that ``save_pretrained`` wrote quantized (its config.json has a ``quantization_config``)
        loads as stored, with nothing quantized again.

        Args:
            directory (str or os.PathLike): the checkpoint.
            dtype (numpy.dtype or str): the weights' and activations' dtype: float32 (default), float64,
                float16 or bfloat16; embeddings and norms stay in it when the layers are quantized.
            quantize: 'int8' or 'int4' quantizes every linear layer as it is packed
                (``attnkit.quantize_linear``).
            group_size: int4's group of inputs (default 128).
            quantize_lm_head (str or bool or None): the LM head's: 'int8' (default, for int4 models too),
                'int4', True (as the layers) or False (float).

        Returns:
            model (Pretrained): The model, of the class it was called on.

        Raises:
            FileNotFoundError: no config.json or weights. ValueError: an unsupported config field, a missing or
                misshapen tensor, a stored quantization other than ``quantize``; each named.

        Examples:
            >>> import dataclasses, json, pathlib, tempfile
            >>> from safetensors.numpy import save_file
            >>> from attnkit.models import BertConfig, BertModel
            >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
            >>> with tempfile.TemporaryDirectory() as d:
            ...     _ = pathlib.Path(d, "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
            ...     save_file(BertModel.random_state_dict(cfg), str(pathlib.Path(d, "model.safetensors")))
            ...     model = BertModel.from_pretrained(d, quantize="int8")
            >>> type(model.encoder.layers[0].feed_forward.w1).__name__
            'QuantizedLinear'
        """
        from .. import quant as Q
        config = load_config(directory)
        where = os.path.join(os.fspath(directory), "config.json")
        stored = config.get("quantization_config")
        stored_spec = (None, None)
        if isinstance(stored, dict) and stored.get("quant_method") == "attnkit":
            qd = stored.get("dtype")
            if qd not in ("int8", "int4"):
                raise ValueError(f"{where}: quantization_config.dtype = {qd!r}, expected 'int8' or 'int4'")
            if quantize is not None and quantize != qd:
                raise ValueError(f"quantize: the checkpoint is stored quantized to {qd}, cannot load it as {quantize!r}")
            stored_spec = (qd, stored.get("group_size"))
            quantize, group_size, quantize_lm_head = None, None, None
        elif stored is not None:
            raise ValueError(f"{where}: quantization_config {stored!r} is not one attnkit wrote (quant_method 'attnkit')")
        parsed = cls.config_class.from_dict(config, where=where)
        tensors = load_tensors(directory)
        with Q.quantizing(quantize, group_size, quantize_lm_head), Q.stored_quantization(*stored_spec):
            model = cls.from_state_dict(tensors, parsed, dtype=dtype,
                                        origin=os.path.join(os.fspath(directory), "model.safetensors"))
        del tensors
        model._hf_config = {k: v for k, v in config.items() if k != "quantization_config"}
        return model

    def save_pretrained(self, directory) -> None:
        """Write config.json and model.safetensors in the checkpoint layout ``from_pretrained`` reads.

        Quantized layers are written as q ('name.weight': int8 (out, in), or int4 two a byte as uint8
        (out, ceil(in / 2))) and 'name.weight_scale' (float32 (out,) or (out, groups)), with a
        ``quantization_config`` in config.json; float tensors in the model's dtype.

        Args:
            directory (str or os.PathLike): where to write (made if missing).

        Raises:
            ValueError: a model not loaded with from_pretrained (its config.json is what is written back).

        Examples:
            >>> import json, os, tempfile
            >>> from safetensors.numpy import save_file
            >>> from attnkit.models import GPT2Config, GPT2LMHeadModel, from_pretrained
            >>> hf = {"model_type": "gpt2", "vocab_size": 64, "n_positions": 16, "n_embd": 32, "n_layer": 1,
            ...       "n_head": 2}
            >>> tensors = GPT2LMHeadModel.random_state_dict(GPT2Config.from_dict(hf), rng=0)
            >>> with tempfile.TemporaryDirectory() as src, tempfile.TemporaryDirectory() as dst:
            ...     with open(os.path.join(src, "config.json"), "w") as f:
            ...         json.dump(hf, f)
            ...     save_file(tensors, os.path.join(src, "model.safetensors"))
            ...     GPT2LMHeadModel.from_pretrained(src, quantize="int4", group_size=32).save_pretrained(dst)
            ...     sorted(os.listdir(dst)), from_pretrained(dst).blocks[0].mlp.w1.dtype
            (['config.json', 'model.safetensors'], 'int4')
        """
        from safetensors.numpy import save_file
        from ..quant import QuantizedLinear
        hf = getattr(self, "_hf_config", None)
        if hf is None:
            raise ValueError("save_pretrained: needs a model loaded with from_pretrained (its config.json is kept)")
        tensors, quant = {}, None
        for name, value in self._checkpoint_tensors():
            tensors[name] = np.ascontiguousarray(value)
        for value in self._layers_packed():
            if isinstance(value, QuantizedLinear):
                quant = {"quant_method": "attnkit", "dtype": value.dtype, "group_size": value.group_size}
                break
        os.makedirs(directory, exist_ok=True)
        config = dict(hf)
        if quant is not None:
            config["quantization_config"] = quant
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        save_file(tensors, os.path.join(directory, "model.safetensors"))

    def _layers_packed(self):
        from ..functional import PackedLinear

        def walk(obj, seen):
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if isinstance(obj, PackedLinear):
                yield obj
            elif isinstance(obj, (list, tuple)):
                for item in obj:
                    yield from walk(item, seen)
            elif hasattr(obj, "__dict__") and not isinstance(obj, (np.ndarray, type)):
                for k, v in vars(obj).items():
                    if not k.startswith("_"):
                        yield from walk(v, seen)
        yield from walk(self, set())
