"""Type stub of attnkit's compiled core (csrc/bindings/module.cpp). Use the wrappers in
attnkit / attnkit.functional; these are their raw counterparts."""
from typing import List, Optional, Tuple, Union

import numpy as np

__version__: str

def sdpa(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    attn_mask: Optional[np.ndarray],
    causal: str,
    scale: Optional[float],
    enable_gqa: bool,
    kv_lengths: Optional[np.ndarray],
    return_lse: bool,
    out: Optional[np.ndarray],
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]: ...
def softmax(x: np.ndarray, axis: int, mask: Optional[np.ndarray]) -> np.ndarray: ...
def linear(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray], activation: str) -> np.ndarray: ...
def layer_norm(
    x: np.ndarray,
    residual: Optional[np.ndarray],
    weight: Optional[np.ndarray],
    bias: Optional[np.ndarray],
    eps: float,
    return_sum: bool,
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]: ...
def activation(x: np.ndarray, activation: str) -> np.ndarray: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def get_isa() -> str: ...
def set_isa(name: str) -> None: ...
def usable_isas() -> List[str]: ...
def compiled_isas() -> List[str]: ...
