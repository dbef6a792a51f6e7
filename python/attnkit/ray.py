"""Batch inference on a Ray cluster: callable classes for ``ray.data.Dataset.map_batches``.

Ray Data runs one instance of each class per worker process (an actor), so the checkpoint is read and
its weights packed once per worker, and every batch after that only runs the model. attnkit's thread
pool is sized from the CPUs Ray gives the worker (``num_cpus`` of ``map_batches``), so N workers of
c CPUs each use N * c threads between them and never oversubscribe a node.

    import ray
    from attnkit.ray import Embedder

    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    ds = ds.map_batches(Embedder, fn_constructor_args=(model_dir,), batch_size=64,
                        concurrency=2, num_cpus=1)
    rows = ds.take_all()   # each row: id, text, embedding (float32, E), error (None)

Both classes also run without Ray (``Embedder(model_dir)(batch)`` on a dict of NumPy arrays), which is
how the tests compare a cluster's results with one process's.

Rows that cannot be run (a text that is not a ``str``, an empty or whitespace-only text) do not stop the
job. The per-row error policy: each output batch has an ``error`` column, ``None`` for a row that ran
and a message for one that did not; such a row's ``embedding`` is all NaN (the column keeps one shape)
and its ``generated_text`` is ``None``. Errors that are not about one row (a missing checkpoint, a
column that is not there) raise, as they would on every batch.

Needs the optional dependencies ``ray`` (``pip install 'attnkit[ray]'``, which also brings
``tokenizers``) only on the driver that builds the Dataset; the classes themselves need ``tokenizers``
to read the checkpoint's ``tokenizer.json``.
"""
from __future__ import annotations

import inspect
import os
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["Embedder", "Generator", "worker_cpus"]

PathLike = Union[str, "os.PathLike[str]"]


def worker_cpus() -> Optional[int]:
    """The CPUs Ray assigned to the calling worker, or None outside a Ray worker.

    Returns:
        The whole number of CPUs in ``ray.get_runtime_context().get_assigned_resources()`` (at least
            1), or None when Ray is not installed, not initialised, or this is the driver.

    Examples:
        >>> from attnkit.ray import worker_cpus
        >>> worker_cpus() is None   # not inside a Ray worker
        True
    """
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    if ctx.worker.mode != ray.WORKER_MODE:
        return None
    cpus = ctx.get_assigned_resources().get("CPU")
    return max(1, int(cpus)) if cpus else None


def _load(model_dir, dtype, quantize, threads):
    """(model, tokenizer): the checkpoint in model_dir through attnkit.models.from_pretrained, its
    tokenizer.json, attnkit's threads from ``threads`` or the worker's CPUs."""
    import attnkit
    from attnkit import models
    from attnkit.models._checkpoint import load_config

    if not isinstance(model_dir, (str, os.PathLike)):
        raise TypeError(f"model_dir: expected a path (str or os.PathLike), got {type(model_dir).__name__}")
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise ValueError(f"model_dir: {model_dir!r} is not a directory (a checkpoint: config.json, "
                         f"model.safetensors, tokenizer.json)")
    if threads is None:
        threads = worker_cpus()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: expected an int >= 1 or None, got {threads!r}")
        attnkit.set_num_threads(threads)
    kwargs: Dict[str, Any] = {"dtype": dtype}
    if quantize is not None:
        mt = load_config(model_dir).get("model_type")
        cls = models._BY_MODEL_TYPE.get(mt)
        if cls is None or "quantize" not in inspect.signature(cls.from_pretrained).parameters:
            raise ValueError(f"quantize: {quantize!r} was given, but this attnkit's from_pretrained for "
                             f"model_type {mt!r} takes no quantize argument (leave it None)")
        kwargs["quantize"] = quantize
    model = models.from_pretrained(model_dir, **kwargs)
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError(f"model_dir: {model_dir!r} has no tokenizer.json (a tokenizers.Tokenizer saved with "
                         f"tokenizer.save(path))")
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError("attnkit.ray reads the checkpoint's tokenizer.json with the 'tokenizers' package: "
                          "pip install tokenizers (or pip install 'attnkit[ray]')") from e
    return model, Tokenizer.from_file(path)


def _column(batch, name: str, role: str) -> List[Any]:
    """batch[name] as a list of Python objects; ValueError naming the column when it is missing."""
    if not hasattr(batch, "keys") or name not in batch:
        have = list(batch.keys()) if hasattr(batch, "keys") else type(batch).__name__
        raise ValueError(f"{role}: column {name!r} is not in the batch (columns: {have})")
    col = batch[name]
    return list(col.tolist() if isinstance(col, np.ndarray) else col)


def _row_error(value) -> Optional[str]:
    """Why one row's text cannot be run, or None."""
    if not isinstance(value, str):
        return f"expected a str, got {type(value).__name__}"
    if not value.strip():
        return "empty text"
    return None


def _with_columns(batch, **columns) -> Dict[str, np.ndarray]:
    """The input batch as a dict of arrays, the new columns added (an input column of the same name is
    replaced)."""
    out = {k: (v if isinstance(v, np.ndarray) else np.asarray(v)) for k, v in batch.items()}
    out.update(columns)
    return out


def _object_array(values) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


class _Runner:
    """What Embedder and Generator share: the model, the tokenizer, tokenizing a batch."""

    def __init__(self, model_dir: PathLike, *, dtype: Any = np.float32, quantize: Optional[str] = None,
                 threads: Optional[int] = None, max_length: Optional[int] = None):
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 1):
            raise ValueError(f"max_length: expected an int >= 1 or None, got {max_length!r}")
        self.model, self.tokenizer = _load(model_dir, dtype, quantize, threads)
        self.model_dir = os.fspath(model_dir)
        limit = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None)
        self.max_length = max_length or limit

    def _encode(self, texts: List[str], *, keep_last: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """Token ids (B, L) int64 right-padded with 0 and the attention mask (B, L) bool; each row cut to
        its first (or, keep_last, its last) max_length tokens."""
        enc = self.tokenizer.encode_batch(texts)
        n = self.max_length
        rows = [e.ids if n is None or len(e.ids) <= n else (e.ids[-n:] if keep_last else e.ids[:n]) for e in enc]
        L = max(len(r) for r in rows)
        ids = np.zeros((len(rows), L), np.int64)
        mask = np.zeros((len(rows), L), bool)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = True
        return ids, mask


class Embedder(_Runner):
    """Adds an embedding per row: a callable class for ``Dataset.map_batches`` (one model per worker).

    The text of each row is tokenized with the checkpoint's ``tokenizer.json`` (cut to ``max_length``
    tokens), run through the model (any checkpoint ``attnkit.models.from_pretrained`` loads: BERT-family
    encoders, or a decoder's last hidden states), and pooled as sentence-transformers does: the mean of
    the token vectors over the attention mask, then divided by its L2 norm (``normalize``).

    Args:
        model_dir: checkpoint directory (config.json, model.safetensors, tokenizer.json), readable on
            every node (a shared file system, or copied there).
        text_column: input column of ``str``.
        output_column: name of the added column.
        pooling: ``"mean"`` (default), ``"cls"`` (the first token's vector) or ``"none"``: the hidden
            states themselves, one (L_i, E) array per row (a ragged column).
        normalize: divide each pooled vector by its L2 norm (max(norm, 1e-12), as torch's
            ``F.normalize``); ignored with ``pooling="none"``.
        max_length: tokens kept per row (default: the model's position limit).
        dtype: weights and activations: ``np.float32`` (default), ``"bfloat16"`` or ``np.float16``
            (outputs are float32 either way).
        quantize: forwarded to ``from_pretrained(quantize=...)`` when the model class accepts it;
            a ValueError otherwise. None: full-precision weights.
        threads: attnkit threads of this worker; None: the CPUs Ray assigned to the worker
            (``num_cpus`` of map_batches), or attnkit's default outside Ray.

    Returns (per call):
        The batch as a dict of NumPy arrays with two columns added: ``output_column``, float32 (B, E)
        (pooled) or an object array of (L_i, E) arrays (``pooling="none"``), and ``error`` (object: None,
        or why the row was not run; its embedding is then NaN). Every input column is kept, rows in order.

    Raises:
        TypeError, ValueError: bad arguments, each naming the argument; a missing ``text_column``.
        ImportError: ``tokenizers`` is not installed.

    Examples:
        >>> import ray                                               # doctest: +SKIP
        >>> ds = ray.data.from_items([{"text": "a b c"}, {"text": "c d"}])      # doctest: +SKIP
        >>> ds.map_batches(Embedder, fn_constructor_args=(model_dir,), concurrency=2,
        ...                num_cpus=1, batch_size=32).take_all()      # doctest: +SKIP
    """

    _POOLING = ("mean", "cls", "none")

    def __init__(self, model_dir: PathLike, *, text_column: str = "text", output_column: str = "embedding",
                 pooling: str = "mean", normalize: bool = True, max_length: Optional[int] = None,
                 dtype: Any = np.float32, quantize: Optional[str] = None, threads: Optional[int] = None):
        if pooling not in self._POOLING:
            raise ValueError(f"pooling: expected one of {self._POOLING}, got {pooling!r}")
        for name, v in (("text_column", text_column), ("output_column", output_column)):
            if not isinstance(v, str):
                raise TypeError(f"{name}: expected a str, got {type(v).__name__}")
        super().__init__(model_dir, dtype=dtype, quantize=quantize, threads=threads, max_length=max_length)
        self.text_column, self.output_column = text_column, output_column
        self.pooling, self.normalize = pooling, bool(normalize)

    def hidden(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The model's last hidden states (B, L, E) as float32 for ids (B, L) and mask (B, L)."""
        if hasattr(self.model, "hidden_states"):
            h = self.model.hidden_states(ids, attention_mask=mask)
        else:
            h = self.model(ids, attention_mask=mask)
        return np.asarray(h, dtype=np.float32)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        texts = _column(batch, self.text_column, "text_column")
        errors = [_row_error(t) for t in texts]
        good = [i for i, e in enumerate(errors) if e is None]
        E = self.model.config.hidden_size
        pooled = np.full((len(texts), E), np.nan, np.float32)
        ragged: List[Any] = [None] * len(texts)
        if good:
            ids, mask = self._encode([texts[i] for i in good])
            h = self.hidden(ids, mask)                              # (G, L, E)
            if self.pooling == "none":
                for j, i in enumerate(good):
                    ragged[i] = h[j, :mask[j].sum()].copy()
            else:
                if self.pooling == "mean":
                    w = mask[:, :, None].astype(np.float32)
                    v = (h * w).sum(1) / np.maximum(w.sum(1), 1e-9)  # sentence-transformers' clamp
                else:
                    v = h[:, 0]
                if self.normalize:
                    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
                pooled[good] = v
        if self.pooling == "none":
            for i, e in enumerate(errors):
                if e is not None:
                    ragged[i] = np.full((0, E), np.nan, np.float32)
            out = _object_array(ragged)
        else:
            out = pooled
        return _with_columns(batch, **{self.output_column: out, "error": _object_array(errors)})


class Generator(_Runner):
    """Adds a continuation per row: a callable class for ``Dataset.map_batches`` (one model per worker).

    Each prompt is tokenized with the checkpoint's ``tokenizer.json`` and continued by the model's
    ``generate`` (GPT-2, Llama, Qwen2, Mistral checkpoints). Greedy rows of a batch are decoded together
    (right-padded, one mask); sampled rows one at a time with a generator seeded from ``seed`` and the
    prompt's text, so a row's sample does not depend on which batch or worker it landed in.

    Args:
        model_dir: checkpoint directory (config.json, model.safetensors, tokenizer.json), readable on
            every node.
        prompt_column: input column of ``str``.
        output_column: name of the added column: the decoded new tokens (without the prompt), cut at the
            first end-of-sequence token.
        max_new_tokens: tokens generated per row (int >= 0).
        do_sample: False: greedy; True: sampling with ``temperature``, ``top_k``, ``top_p`` (models whose
            ``generate`` takes them: Llama, Qwen2, Mistral).
        temperature: sampling temperature (> 0), passed to ``generate``.
        top_k: keep the k most likely tokens (None: all), passed to ``generate``.
        top_p: keep the smallest set of tokens of probability >= top_p (None: all), passed to ``generate``.
        seed: int; with ``do_sample`` each row draws from ``numpy.random.default_rng([seed, crc32(prompt)])``.
        eos_token_id: end-of-sequence id(s); None: the model config's.
        max_length: prompt tokens kept (the last ones; default: the model's position limit less
            max_new_tokens).
        dtype: as for [Embedder][attnkit.ray.Embedder].
        quantize: as for [Embedder][attnkit.ray.Embedder].
        threads: as for [Embedder][attnkit.ray.Embedder].

    Returns (per call):
        The batch with ``output_column`` (object array of str, None for a row that was not run) and
        ``error`` (None, or why the row was not run). Every input column is kept, rows in order.

    Raises:
        TypeError, ValueError: bad arguments, each naming it (a model without ``generate``, such as a
        BERT checkpoint: ValueError naming model_dir); a missing ``prompt_column``.

    Examples:
        >>> ds.map_batches(Generator, fn_constructor_args=(model_dir,),                 # doctest: +SKIP
        ...                fn_constructor_kwargs={"max_new_tokens": 16}, concurrency=2, num_cpus=1)
    """

    def __init__(self, model_dir: PathLike, *, prompt_column: str = "prompt",
                 output_column: str = "generated_text", max_new_tokens: int = 32, do_sample: bool = False,
                 temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 seed: int = 0, eos_token_id: Union[None, int, Sequence[int]] = None,
                 max_length: Optional[int] = None, dtype: Any = np.float32, quantize: Optional[str] = None,
                 threads: Optional[int] = None):
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
        for name, v in (("prompt_column", prompt_column), ("output_column", output_column)):
            if not isinstance(v, str):
                raise TypeError(f"{name}: expected a str, got {type(v).__name__}")
        super().__init__(model_dir, dtype=dtype, quantize=quantize, threads=threads, max_length=max_length)
        if not hasattr(self.model, "generate"):
            raise ValueError(f"model_dir: {self.model_dir!r} holds a {type(self.model).__name__}, which does not "
                             f"generate (a decoder checkpoint is needed: GPT-2, Llama, Qwen2, Mistral)")
        params = inspect.signature(self.model.generate).parameters
        if do_sample and "do_sample" not in params:
            raise ValueError(f"do_sample: {type(self.model).__name__}.generate is greedy or beam search only")
        self.prompt_column, self.output_column = prompt_column, output_column
        self.max_new_tokens, self.do_sample, self.seed = max_new_tokens, bool(do_sample), seed
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p) if do_sample else {}
        eos = self.model.config.eos_token_id if eos_token_id is None else eos_token_id
        self.eos = set() if eos is None else ({int(eos)} if np.ndim(eos) == 0 else {int(e) for e in eos})
        # generate stops a row at eos_token_id (GPT-2's takes one id: the first; the text is cut at any)
        many = len(self.eos) > 1 and "Sequence" in str(params["eos_token_id"].annotation)
        self.eos_arg = None if not self.eos else (sorted(self.eos) if many else min(self.eos))
        if self.max_length is not None:
            self.max_length = max(1, self.max_length - max_new_tokens)

    def _decode(self, new: np.ndarray) -> str:
        toks: List[int] = []
        for t in new.tolist():
            if t in self.eos:
                break
            toks.append(t)
        return self.tokenizer.decode(toks)

    def _generate(self, ids: np.ndarray, mask: np.ndarray, **kw) -> np.ndarray:
        """The new tokens (B, n) of right-padded prompts."""
        out = self.model.generate(ids, self.max_new_tokens, attention_mask=mask, eos_token_id=self.eos_arg, **kw)
        lengths = mask.sum(1)
        n = out.shape[1] - ids.shape[1]
        return np.stack([out[b, lengths[b]:lengths[b] + n] for b in range(len(ids))])

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        prompts = _column(batch, self.prompt_column, "prompt_column")
        errors = [_row_error(t) for t in prompts]
        good = [i for i, e in enumerate(errors) if e is None]
        texts: List[Optional[str]] = [None] * len(prompts)
        if good and self.max_new_tokens == 0:
            for i in good:
                texts[i] = ""
        elif good and not self.do_sample:
            ids, mask = self._encode([prompts[i] for i in good], keep_last=True)
            for j, new in enumerate(self._generate(ids, mask)):
                texts[good[j]] = self._decode(new)
        elif good:
            for i in good:
                ids, mask = self._encode([prompts[i]], keep_last=True)
                rng = np.random.default_rng([self.seed, zlib.crc32(prompts[i].encode("utf-8"))])
                new = self._generate(ids, mask, do_sample=True, seed=rng, **self.sampling)
                texts[i] = self._decode(new[0])
        return _with_columns(batch, **{self.output_column: _object_array(texts), "error": _object_array(errors)})
