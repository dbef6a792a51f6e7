"""The model suite: whole-Transformer timings on attnkit.nn / attnkit.models, in this process.

    run_model_suite(quick, threads) -> rows

* encoder forward (d_model 512, 8 heads, ffn 2048, 6 layers -- 2 with quick --, batch 8 x 128 tokens):
  attnkit vs PyTorch eager (torch.nn.TransformerEncoder, same weights, inference_mode) vs the NumPy
  reference encoder (attnkit.reference's functions, float32);
* greedy generation with a GPT-2-shaped decoder (d 512, 8 heads, 6 layers): tokens/s with the KV cache vs
  recomputing the prefix every step, and the cost of one decoding step after prefixes of 32, 128 and 512
  tokens (flat with the cache, growing without);
* a BERT-base-sized forward (12 layers, hidden 768, 12 heads, batch 1 x 128), random weights in memory:
  attnkit vs PyTorch (the same encoder in torch.nn.TransformerEncoder) vs NumPy (full mode only).

Every contender gets ``threads`` threads (attnkit.set_num_threads, torch.set_num_threads, threadpoolctl for
NumPy's BLAS when installed). PyTorch is optional: without it its rows are left out.
"""
from __future__ import annotations

import contextlib
import time
from statistics import median
from typing import Callable, Dict, List, Optional

import numpy as np

import attnkit
from attnkit import nn
from attnkit import reference as R
from attnkit.models import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

__all__ = ["run_model_suite"]


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _blas_threads(threads: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


def _time(fn: Callable, repeats: int, warmup: int = 1):
    """(median ms, last output) over ``repeats`` calls after ``warmup`` untimed ones."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return median(times) * 1e3, out


def _row(name: str, contender: str, median_ms: float, **extra) -> Dict:
    return {"suite": "model", "name": name, "contender": contender, "median_ms": median_ms, **extra}


# -------------------------------------------------------------------------------------------------
# Encoders in three implementations with the same weights
# -------------------------------------------------------------------------------------------------
def _random_encoder(layers: int, d: int, heads: int, ffn: int, activation: str, eps: float, rng) -> nn.Encoder:
    def layer():
        return nn.EncoderLayer(nn.MultiHeadAttention.init(d, heads, rng=rng),
                               nn.FeedForward.init(d, ffn, activation, rng=rng),
                               nn.LayerNorm.init(d, eps), nn.LayerNorm.init(d, eps))
    return nn.Encoder([layer() for _ in range(layers)])


def _torch_encoder(torch, encoder: nn.Encoder):
    """torch.nn.TransformerEncoder (batch_first, no dropout) holding the same weights as ``encoder``."""
    first = encoder.layers[0]
    d, heads = first.self_attn.d_model, first.self_attn.num_heads
    ffn, act, eps = first.feed_forward.w1.shape[0], first.feed_forward.activation, first.norm1.eps
    layer = torch.nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, activation=act, layer_norm_eps=eps,
                                             batch_first=True, norm_first=first.norm_first)
    model = torch.nn.TransformerEncoder(layer, len(encoder.layers), enable_nested_tensor=False)
    state = {}
    for i, lay in enumerate(encoder.layers):
        p = f"layers.{i}."
        a, f = lay.self_attn, lay.feed_forward
        state.update({p + "self_attn.in_proj_weight": a.in_proj_weight,
                      p + "self_attn.in_proj_bias": a.in_proj_bias,
                      p + "self_attn.out_proj.weight": a.out_proj_weight,
                      p + "self_attn.out_proj.bias": a.out_proj_bias,
                      p + "linear1.weight": f.w1, p + "linear1.bias": f.b1, p + "linear2.weight": f.w2,
                      p + "linear2.bias": f.b2, p + "norm1.weight": lay.norm1.weight, p + "norm1.bias": lay.norm1.bias,
                      p + "norm2.weight": lay.norm2.weight, p + "norm2.bias": lay.norm2.bias})
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return model.eval()


def _numpy_encoder(encoder: nn.Encoder, x: np.ndarray) -> np.ndarray:
    """The same post-LN encoder written with attnkit.reference (plain NumPy), in x's dtype."""
    act = {"relu": R.relu, "gelu": R.gelu, "gelu_tanh": lambda y: R.gelu(y, approximate="tanh")}
    for lay in encoder.layers:
        a, f = lay.self_attn, lay.feed_forward
        h = R.multi_head_attention(x, x, x, a.num_heads, a.in_proj_weight, a.in_proj_bias, a.out_proj_weight,
                                   a.out_proj_bias)
        x = R.layer_norm(x + h, (x.shape[-1],), lay.norm1.weight, lay.norm1.bias, lay.norm1.eps)
        h = R.linear(act[f.activation](R.linear(x, f.w1, f.b1)), f.w2, f.b2)
        x = R.layer_norm(x + h, (x.shape[-1],), lay.norm2.weight, lay.norm2.bias, lay.norm2.eps)
    return x


def _encoder_rows(torch, quick: bool, threads: int, rng) -> List[Dict]:
    layers, B, L, d, heads, ffn = (2 if quick else 6), 8, 128, 512, 8, 2048
    repeats = 3 if quick else 7
    name = f"encoder fwd {layers}L d{d} h{heads} ffn{ffn} B{B}xL{L}"
    encoder = _random_encoder(layers, d, heads, ffn, "relu", 1e-5, rng)
    x = rng.standard_normal((B, L, d), dtype=np.float32)
    tokens = B * L
    ms, ours = _time(lambda: encoder(x), repeats)
    rows = [_row(name, "attnkit", ms, tokens_per_s=tokens / ms * 1e3)]
    if torch is not None:
        tm = _torch_encoder(torch, encoder)
        xt = torch.from_numpy(x)

        def run_torch():
            with torch.inference_mode():
                return tm(xt)
        ms_t, ref = _time(run_torch, repeats)
        err = float(np.abs(ours - ref.numpy()).max())
        rows.append(_row(name, "torch", ms_t, tokens_per_s=tokens / ms_t * 1e3))
        rows[0].update(speedup_vs_torch=ms_t / ms, max_abs_err_vs_torch=err)
    with _blas_threads(threads):
        ms_n, ref = _time(lambda: _numpy_encoder(encoder, x), 1 if quick else 3, warmup=0 if quick else 1)
    rows.append(_row(name, "numpy", ms_n, tokens_per_s=tokens / ms_n * 1e3))
    rows[0].update(speedup_vs_numpy=ms_n / ms, max_abs_err_vs_numpy=float(np.abs(ours - ref).max()))
    return rows


# -------------------------------------------------------------------------------------------------
# Generation
# -------------------------------------------------------------------------------------------------
def _generation_rows(quick: bool, rng) -> List[Dict]:
    config = GPT2Config(vocab_size=8192, n_positions=1024, n_embd=512, n_layer=4 if quick else 6, n_head=8)
    model = GPT2LMHeadModel.from_config(config, rng=rng, std=0.05)
    label = f"gpt2-like {config.n_layer}L d{config.n_embd} h{config.n_head} V{config.vocab_size}"
    prompt_len, new = 32, (16 if quick else 64)
    prompt = rng.integers(0, config.vocab_size, (1, prompt_len))
    rows = []

    ms_c, with_cache = _time(lambda: model.generate(prompt, new), 1 if quick else 3)
    ms_r, without = _time(lambda: model.generate(prompt, new, use_cache=False), 1, warmup=0 if quick else 1)
    name = f"{label} greedy {prompt_len}+{new} tok"
    same = bool(np.array_equal(with_cache, without))
    rows.append(_row(name + ", KV cache", "attnkit", ms_c, tokens_per_s=new / ms_c * 1e3, kv_cache=True,
                     same_tokens=same, note=f"same tokens as recomputing: {same}"))
    rows.append(_row(name + ", recompute", "attnkit", ms_r, tokens_per_s=new / ms_r * 1e3, kv_cache=False,
                     note=f"{ms_r / ms_c:.1f}x the cached time"))

    steps = 8 if quick else 24
    base: Optional[float] = None
    for prefix in (32, 128, 512):
        ids = rng.integers(0, config.vocab_size, (1, prefix))
        cache = model.new_cache(1, prefix + steps + 2)
        model.hidden_states(ids, cache=cache)                                  # prefill
        token = np.array([[1]])
        times = []
        for _ in range(steps):                                                 # one decoding step each
            t0 = time.perf_counter()
            model.logits(model.hidden_states(token, cache=cache)[:, -1])
            times.append(time.perf_counter() - t0)
        ms = median(times[1:]) * 1e3
        base = ms if base is None else base
        rows.append(_row(f"{label} step @{prefix}, KV cache", "attnkit", ms, tokens_per_s=1e3 / ms,
                         prefix=prefix, vs_prefix_32=ms / base, kv_cache=True,
                         note=f"{ms / base:.2f}x the step @32"))
        ms_full, _ = _time(lambda: model.logits(model.hidden_states(np.concatenate([ids, token], 1))[:, -1]),
                           2 if quick else 3)
        rows.append(_row(f"{label} step @{prefix}, recompute", "attnkit", ms_full, tokens_per_s=1e3 / ms_full,
                         prefix=prefix, kv_cache=False, note=f"{ms_full / ms:.1f}x the cached step"))
    return rows


# -------------------------------------------------------------------------------------------------
# BERT-base
# -------------------------------------------------------------------------------------------------
def _bert_rows(torch, quick: bool, threads: int, rng) -> List[Dict]:
    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=512)
    model = BertModel.from_config(config, rng=rng)
    B, L = 1, 128
    ids = rng.integers(0, config.vocab_size, (B, L))
    name = f"BERT-base fwd 12L d768 h12 ffn3072 B{B}xL{L}"
    repeats = 3 if quick else 7
    ms, ours = _time(lambda: model(ids), repeats)
    rows = [_row(name, "attnkit", ms, tokens_per_s=B * L / ms * 1e3)]
    emb = model.embeddings
    if torch is not None:
        tm = _torch_encoder(torch, model.encoder)
        word, pos, typ = (torch.from_numpy(a) for a in (emb.word, emb.position, emb.token_type))
        ln_w, ln_b = torch.from_numpy(emb.norm.weight), torch.from_numpy(emb.norm.bias)
        ids_t = torch.from_numpy(ids)

        def run_torch():
            with torch.inference_mode():
                x = word[ids_t] + pos[:L] + typ[0]
                x = torch.nn.functional.layer_norm(x, (768,), ln_w, ln_b, config.layer_norm_eps)
                return tm(x)
        ms_t, ref = _time(run_torch, repeats)
        rows.append(_row(name, "torch", ms_t, tokens_per_s=B * L / ms_t * 1e3))
        rows[0].update(speedup_vs_torch=ms_t / ms, max_abs_err_vs_torch=float(np.abs(ours - ref.numpy()).max()))
    if not quick:
        def run_numpy():
            x = emb.word[ids] + emb.position[:L] + emb.token_type[0]
            x = R.layer_norm(x, (768,), emb.norm.weight, emb.norm.bias, config.layer_norm_eps)
            return _numpy_encoder(model.encoder, x)
        with _blas_threads(threads):
            ms_n, ref = _time(run_numpy, 1)
        rows.append(_row(name, "numpy", ms_n, tokens_per_s=B * L / ms_n * 1e3))
        rows[0].update(speedup_vs_numpy=ms_n / ms, max_abs_err_vs_numpy=float(np.abs(ours - ref).max()))
    return rows


def run_model_suite(quick: bool, threads: int) -> List[Dict]:
    """Measure the model suite in this process with ``threads`` threads per contender; returns result rows."""
    torch = _torch()
    previous = attnkit.get_num_threads()
    attnkit.set_num_threads(threads)
    torch_threads = None
    if torch is not None:
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    try:
        rows = _encoder_rows(torch, quick, threads, rng)
        rows += _generation_rows(quick, rng)
        rows += _bert_rows(torch, quick, threads, rng)
    finally:
        attnkit.set_num_threads(previous)
        if torch is not None:
            torch.set_num_threads(torch_threads)
    for r in rows:
        r["threads"] = threads
    return rows


if __name__ == "__main__":  # pragma: no cover - manual runs
    import argparse
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    for row in run_model_suite(a.quick, a.threads):
        print(json.dumps(row))
