"""Optional engine contenders for the model suite (issue 8): ONNX Runtime and CTranslate2, float32, the same
threads as every other contender (ONNX Runtime: intra-op ``threads``, inter-op 1; CTranslate2: intra_threads
``threads``, inter_threads 1). Each is measured only when its package is importable, and, since its model is
built from a Hugging Face ``transformers`` model, when torch and transformers are too.

    bert_engines(state_dict, config, threads)   -> ({engine: fn(ids (B, L)) -> (B, L, hidden)}, {engine: why not})
    gpt2_engines(hf_model, threads)             -> ({engine: fn(prompt (1, P), new) -> (1, P + new)}, {engine: why not})
    compare_with_attnkit(res, ratios, tokens)   adds each engine's agreement with attnkit and attnkit's ratios

* BERT forward: ONNX Runtime runs a ``transformers.BertModel`` holding the same weights, exported with
  torch.onnx.export (the TorchScript exporter: the default one needs onnxscript), graph optimizations
  ORT_ENABLE_ALL; CTranslate2 runs ``ctranslate2.Encoder`` on that model saved and converted with its
  TransformersConverter.
* GPT-2 greedy decoding: CTranslate2's ``Generator.generate_batch`` (greedy, no end token, the given number of
  new tokens); ONNX Runtime on the model exported as a prompt graph and a one-token step graph with past keys
  and values (``ort_gpt2``), a NumPy argmax loop around them.

No model hub is needed: CTranslate2's converter reads the vocabulary from a stand-in tokenizer (tokens named
``t0``, ``t1``, ...). Models are written to a temporary directory, loaded, and the directory removed.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
import warnings
from typing import Callable, Dict, Tuple

import numpy as np

from attnkit.bench import harness

__all__ = ["ENGINES", "bert_engines", "gpt2_engines", "compare_with_attnkit", "describe_skipped", "version"]

ENGINES = ("onnxruntime", "ctranslate2")


def version(engine: str) -> str:
    """The engine's name and version, e.g. "onnxruntime 1.32.0" (the engine is importable)."""
    return f"{engine} {getattr(importlib.import_module(engine), '__version__', '?')}"


def _imports(*names: str):
    """The modules ``names``, or the reason (a short string) why one cannot be imported."""
    try:
        return [importlib.import_module(n) for n in names]
    except ImportError as e:
        return f"not installed ({e.name or e})"


# -------------------------------------------------------------------------------------------------
# CTranslate2: conversion without a tokenizer on disk
# -------------------------------------------------------------------------------------------------
class _Vocabulary:
    """What CTranslate2's converter reads from a tokenizer: the tokens in id order (``t<id>``, and the one
    special token by its own name) and the unknown / begin / end tokens (all that special token)."""

    def __init__(self, size: int, special_id: int, special: str):
        self.size, self.special_id = size, special_id
        self.unk_token = self.bos_token = self.eos_token = self.pad_token = special

    def token(self, i: int) -> str:
        return self.unk_token if i == self.special_id else f"t{i}"

    def get_vocab(self) -> Dict[str, int]:
        return {self.token(i): i for i in range(self.size)}


def _ct2_convert(hf_model, vocabulary: _Vocabulary, workdir: str) -> str:
    """Save ``hf_model`` under ``workdir`` and convert it to a float32 CTranslate2 model; returns its path."""
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return vocabulary

    hf_dir, out = os.path.join(workdir, "hf"), os.path.join(workdir, "ct2")
    with _no_progress_bars():        # transformers' bars for saving and loading would cut through the bench's
        hf_model.save_pretrained(hf_dir)
        return Converter(hf_dir).convert(out, quantization="float32", force=True)


@contextlib.contextmanager
def _no_progress_bars():
    from transformers.utils import logging
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


def _ct2_options(threads: int) -> dict:
    return dict(device="cpu", compute_type="float32", intra_threads=threads, inter_threads=1)


# -------------------------------------------------------------------------------------------------
# BERT forward
# -------------------------------------------------------------------------------------------------
def hf_bert(torch, transformers, state_dict: Dict[str, np.ndarray], config):
    """A ``transformers.BertModel`` (eval mode) holding ``state_dict`` (Hugging Face layout, as
    ``attnkit.models.BertModel.random_state_dict`` makes it) for an attnkit ``BertConfig``. Its pooler
    (which CTranslate2's converter requires, and no output here uses) keeps its random initial weights."""
    c = config
    hf_config = transformers.BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size, hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id,
        position_embedding_type="absolute")   # CTranslate2's converter reads it; transformers 5 dropped it
    model = transformers.BertModel(hf_config).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()},
                                                strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise ValueError(f"BERT weights do not fit transformers.BertModel: missing {missing}, unexpected {unexpected}")
    return model


def _ort_session(ort, path: str, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no spinning between calls: idle workers must not take a core from the contender timed next
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_bert(torch, ort, hf_model, threads: int, workdir: str) -> Callable:
    """ONNX Runtime on ``hf_model`` exported to ONNX (dynamic batch and length): fn(ids (B, L) ints) -> (B, L, E)."""
    class LastHiddenState(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).last_hidden_state

    path, dims = os.path.join(workdir, "bert.onnx"), {0: "batch", 1: "length"}
    with warnings.catch_warnings():        # the TorchScript exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(LastHiddenState(hf_model).eval(), (torch.zeros((1, 8), dtype=torch.int64),), path,
                          dynamo=False, input_names=["input_ids"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": dims, "last_hidden_state": dims}, opset_version=17)
    session = _ort_session(ort, path, threads)
    return lambda ids: session.run(None, {"input_ids": np.asarray(ids, dtype=np.int64)})[0]


def ct2_bert(ctranslate2, hf_model, threads: int, workdir: str) -> Callable:
    """CTranslate2's Encoder on ``hf_model`` converted: fn(ids (B, L) ints) -> (B, L, E)."""
    vocabulary = _Vocabulary(hf_model.config.vocab_size, 100 % hf_model.config.vocab_size, "[UNK]")  # BERT's id
    encoder = ctranslate2.Encoder(_ct2_convert(hf_model, vocabulary, workdir), **_ct2_options(threads))
    return lambda ids: np.asarray(encoder.forward_batch(np.asarray(ids).tolist()).last_hidden_state)


def bert_engines(state_dict: Dict[str, np.ndarray], config, threads: int) -> Tuple[Dict, Dict]:
    """The engines that can run a BERT forward with these weights: ({engine: fn(ids) -> (B, L, E)},
    {engine: why it is left out})."""
    base = _imports("torch", "transformers")
    if isinstance(base, str):
        return {}, {e: f"torch and transformers build its model: {base}" for e in ENGINES}
    torch, transformers = base
    built = []  # the transformers model, built once for the first engine that is installed

    def hf_model():
        if not built:
            built.append(hf_bert(torch, transformers, state_dict, config))
        return built[0]
    return _build({"onnxruntime": lambda ort, workdir: ort_bert(torch, ort, hf_model(), threads, workdir),
                   "ctranslate2": lambda ct2, workdir: ct2_bert(ct2, hf_model(), threads, workdir)})


def _build(builders: Dict[str, Callable]) -> Tuple[Dict, Dict]:
    """{engine: build(module, workdir) -> fn} -> ({engine: fn}, {engine: why it is left out}): an engine not
    installed, or whose exporter or converter fails on this version, is left out with the reason."""
    fns, skipped = {}, {}
    with tempfile.TemporaryDirectory(prefix="attnkit-engines-") as workdir:
        for engine, build in builders.items():
            found = _imports(engine)
            if isinstance(found, str):
                skipped[engine] = found
                continue
            try:
                fns[engine] = build(found[0], workdir)
            except Exception as e:  # an exporter or converter that does not fit this version: say so, go on
                skipped[engine] = f"error: {type(e).__name__}: {e}"
    return fns, skipped


# -------------------------------------------------------------------------------------------------
# GPT-2 greedy decoding
# -------------------------------------------------------------------------------------------------
def ct2_gpt2(ctranslate2, hf_model, threads: int, workdir: str) -> Callable:
    """CTranslate2's Generator on ``hf_model`` (a transformers GPT2LMHeadModel) converted:
    fn(prompt (1, P) ints, new) -> (1, P + new) ids, greedy, never stopping early."""
    c = hf_model.config
    vocabulary = _Vocabulary(c.vocab_size, c.eos_token_id, "<|endoftext|>")
    generator = ctranslate2.Generator(_ct2_convert(hf_model, vocabulary, workdir),
                                      **_ct2_options(threads))

    def generate(prompt, new: int):
        prompt = np.asarray(prompt)
        starts = [[vocabulary.token(int(i)) for i in row] for row in prompt]
        res = generator.generate_batch(starts, max_length=new, min_length=new, sampling_topk=1, beam_size=1,
                                       end_token=[], include_prompt_in_result=False)
        return np.concatenate([prompt, np.array([r.sequences_ids[0] for r in res], dtype=prompt.dtype)], axis=1)
    return generate


def _flat_cache(cache, layers: int) -> list:
    """[k0, v0, k1, v1, ...] of a transformers KV cache (a Cache with ``layers``, the older ``key_cache``
    lists, or legacy tuples)."""
    if hasattr(cache, "layers"):
        return [t for layer in cache.layers[:layers] for t in (layer.keys, layer.values)]
    if hasattr(cache, "key_cache"):
        return [t for i in range(layers) for t in (cache.key_cache[i], cache.value_cache[i])]
    return [t for i in range(layers) for t in cache[i][:2]]


def ort_gpt2(torch, ort, hf_model, threads: int, workdir: str) -> Callable:
    """ONNX Runtime decoding greedily with ``hf_model`` (a transformers GPT2LMHeadModel) exported as two graphs
    (the TorchScript exporter, ORT_ENABLE_ALL): the prompt (ids (1, P) -> last logits and the keys and values
    of every layer) and one step (a token, its position and the past keys and values -> logits and the past
    grown by one), with a NumPy argmax loop around them: fn(prompt (1, P) ints, new) -> (1, P + new) ids. The
    past goes back in as the arrays the last step returned (no IO binding)."""
    import inspect
    import transformers
    c = hf_model.config
    layers, heads, dh = c.n_layer, c.n_head, c.n_embd // c.n_head
    kw = "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"

    class Prompt(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, ids):
            out = self.model(input_ids=ids, use_cache=True, **{kw: transformers.DynamicCache()})
            return (out.logits[:, -1], *_flat_cache(out.past_key_values, layers))

    class Step(Prompt):
        def forward(self, ids, pos, *past):
            cache = transformers.DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(input_ids=ids, position_ids=pos, use_cache=True, **{kw: cache})
            return (out.logits[:, -1], *_flat_cache(out.past_key_values, layers))

    past_names = [f"past_{kv}{i}" for i in range(layers) for kv in "kv"]
    out_names = ["logits"] + [f"present_{kv}{i}" for i in range(layers) for kv in "kv"]
    paths = os.path.join(workdir, "gpt2_prompt.onnx"), os.path.join(workdir, "gpt2_step.onnx")
    with warnings.catch_warnings(), torch.no_grad():  # the exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        # traced at P = 8 (the prompt graph's causal mask) and at one token over a past of 8 (the step's)
        torch.onnx.export(Prompt(hf_model).eval(), (torch.zeros((1, 8), dtype=torch.int64),), paths[0], dynamo=False,
                          input_names=["ids"], output_names=out_names, opset_version=17,
                          dynamic_axes={"ids": {1: "length"}, **{n: {2: "length"} for n in out_names[1:]}})
        past = [torch.zeros((1, heads, 8, dh)) for _ in past_names]
        torch.onnx.export(Step(hf_model).eval(), (torch.zeros((1, 1), dtype=torch.int64), torch.tensor([[8]]), *past),
                          paths[1], dynamo=False, input_names=["ids", "pos"] + past_names, output_names=out_names,
                          opset_version=17, dynamic_axes={**{n: {2: "past"} for n in past_names},
                                                          **{n: {2: "total"} for n in out_names[1:]}})
    prompt_session, step_session = (_ort_session(ort, p, threads) for p in paths)

    def generate(prompt, new: int):
        prompt = np.asarray(prompt, dtype=np.int64)
        out = prompt_session.run(None, {"ids": prompt})
        tokens = [int(np.argmax(out[0][0]))]
        for t in range(new - 1):
            feed = {"ids": np.array([[tokens[-1]]], np.int64), "pos": np.array([[prompt.shape[1] + t]], np.int64)}
            feed.update(zip(past_names, out[1:]))
            out = step_session.run(None, feed)
            tokens.append(int(np.argmax(out[0][0])))
        return np.concatenate([prompt, np.array([tokens], dtype=prompt.dtype)], axis=1)
    return generate


def gpt2_engines(hf_model, threads: int) -> Tuple[Dict, Dict]:
    """The engines that can decode greedily with ``hf_model``: ({engine: fn(prompt, new) -> ids},
    {engine: why it is left out})."""
    base = _imports("torch")
    if isinstance(base, str):
        return {}, {e: f"torch builds its model: {base}" for e in ENGINES}
    return _build({"onnxruntime": lambda ort, workdir: ort_gpt2(base[0], ort, hf_model, threads, workdir),
                   "ctranslate2": lambda ct2, workdir: ct2_gpt2(ct2, hf_model, threads, workdir)})


# -------------------------------------------------------------------------------------------------
# Rows
# -------------------------------------------------------------------------------------------------
def measure_apart(fns: Dict, budget: float, min_repeats: int) -> Dict:
    """harness.measure_contenders for a case with engines: attnkit, PyTorch and the oracle together, then
    each engine in alternating blocks with attnkit alone (its row keeps that attnkit median as
    ``attnkit_ms_beside``, the base of ``ratio_vs_<engine>``). Timed together, CTranslate2's calls slowed
    the PyTorch calls after them (PyTorch's BERT-base median 98 -> 112 ms, its minimum unchanged; no thread
    of CTranslate2's spins meanwhile: cause not found), which would have flattered attnkit's ratio."""
    res = harness.measure_contenders({c: f for c, f in fns.items() if c not in ENGINES}, budget, min_repeats)
    for engine in (e for e in ENGINES if e in fns):
        pair = harness.measure_contenders({"attnkit": fns["attnkit"], engine: fns[engine]}, budget, min_repeats)
        res[engine] = dict(pair[engine], attnkit_ms_beside=pair.get("attnkit", {}).get("median_ms"))
    return res


def compare_with_attnkit(res: Dict, ratios: Dict, tokens: bool = False) -> None:
    """For each engine contender in ``res`` (harness results): its agreement with attnkit's output
    (``max_abs_err_vs_attnkit``, or ``same_tokens_as_attnkit`` when ``tokens``), its version, a note, and
    on attnkit's row ``ratio_vs_<engine>`` = engine time / attnkit time. Updates ``ratios`` in place."""
    ours = res.get("attnkit", {})
    for engine in (e for e in ENGINES if e in res):
        r, row = res[engine], ratios.setdefault(engine, {})
        row["version"] = version(engine)
        parts = [row["version"]]
        if ours.get("out") is not None and r.get("out") is not None:
            if tokens:
                same = bool(np.array_equal(ours["out"], r["out"]))
                row["same_tokens_as_attnkit"] = same
                parts.append(f"same tokens as attnkit: {same}")
            else:
                row["max_abs_err_vs_attnkit"] = harness.max_abs_diff(r["out"], ours["out"])
                parts.append(f"max |diff| vs attnkit {row['max_abs_err_vs_attnkit']:.1e}")
        base = r.get("attnkit_ms_beside") or ours.get("median_ms")
        if base and r.get("median_ms"):
            ratio = r["median_ms"] / base
            ratios.setdefault("attnkit", {})[f"ratio_vs_{engine}"] = ratio
            parts.append(f"attnkit {ratio:.2f}x as fast")
        row["note"] = "; ".join(parts + ([r["note"]] if r.get("note") else []))


def describe_skipped(skipped: Dict[str, str]) -> str:
    """One line for attnkit's row: which engines were not measured and why."""
    return "; ".join(f"{e} not measured: {why}" for e, why in skipped.items())
