"""Reading Hugging Face-layout checkpoints without torch: config.json + model.safetensors as NumPy arrays.

A checkpoint directory holds ``config.json`` and either ``model.safetensors`` or the shards listed in
``model.safetensors.index.json``. Tensors are read with ``safetensors.numpy.load_file`` into a plain dict;
``attnkit.nn.StateDict`` hands them out by name with their expected shapes, so that a missing or misshapen
tensor is reported by its full name, and :func:`field` does the same for configuration fields.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

__all__ = ["load_config", "load_tensors", "load_pretrained", "field", "Pretrained"]

_MISSING = object()


def load_config(directory) -> Dict[str, Any]:
    path = os.path.join(os.fspath(directory), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no config.json in the checkpoint directory")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config


def load_tensors(directory) -> Dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` (or of its shards) as NumPy arrays."""
    try:
        from safetensors.numpy import load_file
    except ImportError as e:  # pragma: no cover - safetensors is a test dependency
        raise ImportError("reading checkpoints needs the 'safetensors' package (pip install safetensors)") from e
    directory = os.fspath(directory)
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(single):
        return dict(load_file(single))
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors: Dict[str, np.ndarray] = {}
        for shard in shards:
            tensors.update(load_file(os.path.join(directory, shard)))
        return tensors
    raise FileNotFoundError(f"{directory}: no model.safetensors (or model.safetensors.index.json); "
                            f"save with save_pretrained(..., safe_serialization=True)")


def load_pretrained(directory) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    return load_config(directory), load_tensors(directory)


def field(config: Dict[str, Any], name: str, kind, default: Any = _MISSING, *, choices: Optional[Iterable] = None,
          where: str = "config.json"):
    """config[name] checked to be of ``kind`` (and among ``choices``); KeyError/ValueError naming the field."""
    if name not in config or config[name] is None:
        if default is _MISSING:
            raise KeyError(f"{where}: missing field '{name}'")
        return default
    value = config[name]
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(f"{where}: field '{name}' should be {kind.__name__}, got {value!r}")
    if choices is not None and value not in choices:
        raise ValueError(f"{where}: field '{name}' = {value!r} is not supported (supported: {sorted(choices)})")
    return value


class Pretrained:
    """``from_pretrained(directory)`` for a model class with a ``config_class`` (having ``from_dict``) and a
    ``from_state_dict(tensors, config, *, dtype, origin)`` constructor."""

    config_class: Any = None

    @classmethod
    def from_pretrained(cls, directory, *, dtype=np.float32):
        """Load ``directory``/config.json + model.safetensors (as written by ``save_pretrained``)."""
        config, tensors = load_pretrained(directory)
        return cls.from_state_dict(tensors, cls.config_class.from_dict(config), dtype=dtype,
                                   origin=os.path.join(os.fspath(directory), "model.safetensors"))
