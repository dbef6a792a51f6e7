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

    run_half_model_suite(opts) -> rows        (python -m attnkit.bench --dtype float16|bfloat16)

* the same BERT-base-sized forward with its weights in float16 or bfloat16: attnkit in that dtype vs attnkit
  float32 (the same rounded weights) vs PyTorch in that dtype.

* translation with a Marian-base-shaped encoder-decoder (``bench.translation``): greedy and 4 beams, batch 1
  and 8, vs transformers and CTranslate2's Translator; the decoding step after 64 vs 8 target tokens.

The BERT-base forward and GPT-2-small decoding also time ONNX Runtime and CTranslate2 when they are installed
(``bench.engines``: same weights, float32, same threads; each row says how far its output is from attnkit's).

The machinery is the other suites': every contender gets ``threads`` threads (``suites.configure``), is timed
by ``harness.measure_contenders`` (attnkit and PyTorch in alternating blocks, the oracle alone) and compared by
``harness.compare`` (speedup_vs_numpy, ratio_vs_torch = torch time / attnkit time, max_abs_err vs the oracle);
attnkit's row adds max_abs_err_vs_torch. PyTorch is optional: without it its rows are left out.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from attnkit import nn
from attnkit import reference as R
from attnkit.bench import breakdown, engines, harness, suites
from attnkit.bench.llama import llama_rows
from attnkit.bench.translation import translation_rows
from attnkit.models import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

__all__ = ["run_model_suite"]


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _row(case: str, contender: str, m: Dict, tokens: int, **extra) -> Dict:
    """A result row from a harness measurement ``m``; tokens/s counts ``tokens`` per call."""
    row = {"suite": "model", "case": case, "contender": contender, **{k: v for k, v in m.items() if k != "out"}}
    if m.get("median_ms"):
        row["tokens_per_s"] = tokens / m["median_ms"] * 1e3
    return dict(row, **extra)


def _compared_rows(case: str, fns: Dict, tokens: int, opts: suites.Options, torch=None,
                   skipped: Dict = None) -> List[Dict]:
    """Time the contenders of one forward pass and compare them: one row per contender. attnkit's and
    PyTorch's rows also get the time per category (linear, attention, norms, other) of one call; the engines'
    rows (``bench.engines``) their agreement with attnkit, and attnkit's note the engines ``skipped``.
    The baseline of the ratios and errors: the NumPy oracle, or attnkit fp32 in a half-precision run."""
    res = engines.measure_apart(fns, opts.budget, opts.min_repeats)
    ratios = harness.compare(res, **suites.compare_keys(opts))
    ours, theirs = (res.get(c, {}).get("out") for c in ("attnkit", "torch"))
    if ours is not None and theirs is not None:
        ratios["attnkit"]["max_abs_err_vs_torch"] = harness.max_abs_diff(ours, theirs)
    parts = {}
    if "attnkit" in fns:
        parts["attnkit"] = breakdown.attnkit_breakdown(fns["attnkit"])
    if "torch" in fns and torch is not None:
        parts["torch"] = breakdown.torch_breakdown(torch, fns["torch"])
    for c, p in parts.items():
        ratios[c]["breakdown_ms"] = p
        ratios[c]["note"] = breakdown.describe(p)
    engines.compare_with_attnkit(res, ratios)
    if skipped:
        ratios["attnkit"]["note"] = "; ".join(filter(None, [ratios["attnkit"].get("note"),
                                                           engines.describe_skipped(skipped)]))
    return [_row(case, c, r, tokens, **ratios[c]) for c, r in res.items()]


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


def _numpy_encoder(encoder: nn.Encoder):
    """The same post-LN encoder written with attnkit.reference (plain NumPy), in x's dtype: x -> y.
    The weights are read back from attnkit's packed copies once, here."""
    act = {"relu": R.relu, "gelu": R.gelu, "gelu_tanh": lambda y: R.gelu(y, approximate="tanh")}
    layers = [(lay, dict(lay.self_attn.named_parameters()), dict(lay.feed_forward.named_parameters()))
              for lay in encoder.layers]

    def run(x):
        for lay, a, f in layers:
            h = R.multi_head_attention(x, x, x, lay.self_attn.num_heads, a["in_proj_weight"], a["in_proj_bias"],
                                       a["out_proj_weight"], a["out_proj_bias"])
            x = R.layer_norm(x + h, (x.shape[-1],), lay.norm1.weight, lay.norm1.bias, lay.norm1.eps)
            h = R.linear(act[lay.feed_forward.activation](R.linear(x, f["w1"], f["b1"])), f["w2"], f["b2"])
            x = R.layer_norm(x + h, (x.shape[-1],), lay.norm2.weight, lay.norm2.bias, lay.norm2.eps)
        return x
    return run


def _encoder_rows(torch, opts: suites.Options, rng) -> List[Dict]:
    layers, B, L, d, heads, ffn = (2 if opts.quick else 6), 8, 128, 512, 8, 2048
    encoder = _random_encoder(layers, d, heads, ffn, "relu", 1e-5, rng)
    x = rng.standard_normal((B, L, d), dtype=np.float32)
    fns = {"attnkit": lambda: encoder(x)}
    if torch is not None:
        tm, xt = _torch_encoder(torch, encoder), torch.from_numpy(x)
        fns["torch"] = lambda: _no_grad(torch, tm, xt)
    numpy_encoder = _numpy_encoder(encoder)
    fns["numpy"] = lambda: numpy_encoder(x)
    return _compared_rows(f"encoder fwd {layers}L d{d} h{heads} ffn{ffn} B{B}xL{L}", fns, B * L, opts, torch)


def _no_grad(torch, fn, *args):
    with torch.inference_mode():
        return fn(*args)


# -------------------------------------------------------------------------------------------------
# Generation
# -------------------------------------------------------------------------------------------------
def _generation_rows(opts: suites.Options, rng) -> List[Dict]:
    quick = opts.quick
    config = GPT2Config(vocab_size=8192, n_positions=1024, n_embd=512, n_layer=4 if quick else 6, n_head=8)
    model = GPT2LMHeadModel.from_config(config, rng=rng, std=0.05)
    label = f"gpt2-like {config.n_layer}L d{config.n_embd} h{config.n_head} V{config.vocab_size}"
    prompt_len, new = 32, (16 if quick else 64)
    prompt = rng.integers(0, config.vocab_size, (1, prompt_len))

    cached = harness.measure(lambda: model.generate(prompt, new), opts.budget, opts.min_repeats)
    recomputed = harness.measure(lambda: model.generate(prompt, new, use_cache=False), opts.budget, opts.min_repeats)
    name = f"{label} greedy {prompt_len}+{new} tok"
    same = bool(np.array_equal(cached["out"], recomputed["out"]))
    rows = [_row(name + ", KV cache", "attnkit", cached, new, kv_cache=True, same_tokens=same,
                 note=f"same tokens as recomputing: {same}"),
            _row(name + ", recompute", "attnkit", recomputed, new, kv_cache=False,
                 note=f"{recomputed['median_ms'] / cached['median_ms']:.1f}x the cached time")]

    rows.append(_step_over_kernels(model, label, rng))
    steps = 8 if quick else 24
    base = None
    for prefix in (32, 128, 512):
        ids = rng.integers(0, config.vocab_size, (1, prefix))
        cache = model.new_cache(1, prefix + steps + 2)                         # room for 2 warm-up steps
        model.hidden_states(ids, cache=cache)                                  # prefill
        token = np.array([[1]])
        step = harness.measure(lambda: model.logits(model.hidden_states(token, cache=cache)[:, -1]),
                               opts.budget, min_repeats=steps, max_repeats=steps)   # each call: one more position
        ms = step["median_ms"]
        base = ms if base is None else base
        rows.append(_row(f"{label} step @{prefix}, KV cache", "attnkit", step, 1, prefix=prefix,
                         vs_prefix_32=ms / base, kv_cache=True, note=f"{ms / base:.2f}x the step @32"))
        full = harness.measure(lambda: model.logits(model.hidden_states(np.concatenate([ids, token], 1))[:, -1]),
                               opts.budget, opts.min_repeats)
        rows.append(_row(f"{label} step @{prefix}, recompute", "attnkit", full, 1, prefix=prefix, kv_cache=False,
                         note=f"{full['median_ms'] / ms:.1f}x the cached step"))
    return rows


def _step_over_kernels(model: GPT2LMHeadModel, label: str, rng, prefix: int = 128) -> Dict:
    """One decoding step after ``prefix`` tokens: its time against the sum of its kernels' times."""
    ids = rng.integers(0, model.config.vocab_size, (1, prefix))
    cache = model.new_cache(1, prefix + 64)
    model.hidden_states(ids, cache=cache)
    token = np.array([[1]])
    parts = breakdown.attnkit_breakdown(lambda: model.logits(model.hidden_states(token, cache=cache)[:, -1]), repeats=9)
    kernels = parts["linear"] + parts["attention"] + parts["norms"]
    return {"suite": "model", "case": f"{label} one step @{prefix}: time / kernels' time", "contender": "attnkit",
            "median_ms": parts["total"], "kernel_ms": kernels, "step_over_kernels": parts["total"] / kernels,
            "breakdown_ms": parts,
            "note": f"{parts['total'] / kernels:.2f}x the kernels' {kernels:.2f} ms; " + breakdown.describe(parts)}


def _gpt2_small_rows(torch, opts: suites.Options, rng) -> List[Dict]:
    """Greedy decoding with a GPT-2-small-shaped random model (12 layers, d 768, 12 heads, vocab 50257;
    2 layers with quick, toy sizes with tiny): attnkit vs Hugging Face transformers (PyTorch eager) and the
    installed engines of ``bench.engines`` holding the same weights, per new token, and one decoding step
    against the sum of its kernels' times."""
    try:
        import transformers
    except ImportError:
        return []
    shape = (dict(n_layer=1, n_embd=64, n_head=4, vocab_size=512) if opts.tiny else
             dict(n_layer=2 if opts.quick else 12, n_embd=768, n_head=12, vocab_size=50257))
    layers, d, heads, V = shape["n_layer"], shape["n_embd"], shape["n_head"], shape["vocab_size"]
    hf_config = transformers.GPT2Config(n_positions=1024, bos_token_id=V - 1, eos_token_id=V - 1, **shape)
    torch.manual_seed(int(rng.integers(2**31)))
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    config = GPT2Config(n_positions=1024, **shape)
    model = GPT2LMHeadModel.from_state_dict({k: v.numpy() for k, v in hf.state_dict().items()}, config)
    prompt_len, new = 32, (8 if opts.quick else 32)
    prompt = rng.integers(0, V, (1, prompt_len))
    prompt_t = torch.from_numpy(prompt)

    def run_hf():
        with torch.inference_mode():
            return hf.generate(prompt_t, max_new_tokens=new, do_sample=False, use_cache=True,
                               attention_mask=torch.ones_like(prompt_t), pad_token_id=0)
    fns = {"attnkit": lambda: model.generate(prompt, new), "torch": run_hf}
    found, skipped = engines.gpt2_engines(hf, opts.threads)
    fns.update({e: (lambda f=f: f(prompt, new)) for e, f in found.items()})
    res = engines.measure_apart(fns, opts.budget, min_repeats=2)
    same = bool(np.array_equal(res["attnkit"]["out"], res["torch"]["out"].numpy()))
    label = f"gpt2-small-shaped {layers}L d{d} h{heads} V{V} greedy {prompt_len}+{new} tok"
    ratios = harness.compare(res)
    engines.compare_with_attnkit(res, ratios, tokens=True)
    ratios["attnkit"].update(same_tokens=same, note="; ".join(filter(None, [f"same tokens as transformers: {same}",
                                                                            engines.describe_skipped(skipped)])))
    rows = [_row(label, c, r, new, **ratios[c]) for c, r in res.items()]
    rows.append(_step_over_kernels(model, f"gpt2-small-shaped {layers}L", rng))
    return rows


# -------------------------------------------------------------------------------------------------
# BERT-base
# -------------------------------------------------------------------------------------------------
def _bert_config(tiny: bool = False) -> BertConfig:
    if tiny:  # toy sizes, for the smoke test
        return BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=64)
    return BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512)


def _torch_bert(torch, model: BertModel, ids: np.ndarray, dtype=None):
    """A callable running ``model`` (float32 weights) as PyTorch modules on ``ids``, in ``dtype`` (a torch
    dtype; default float32): embeddings + LayerNorm, then torch.nn.TransformerEncoder."""
    c, emb, L = model.config, model.embeddings, ids.shape[1]
    tm = _torch_encoder(torch, model.encoder)
    word, pos, typ, ln_w, ln_b = (torch.from_numpy(a) for a in (emb.word, emb.position, emb.token_type,
                                                                emb.norm.weight, emb.norm.bias))
    if dtype is not None:
        tm = tm.to(dtype)
        word, pos, typ, ln_w, ln_b = (a.to(dtype) for a in (word, pos, typ, ln_w, ln_b))
    ids_t = torch.from_numpy(ids)

    def run_torch():
        x = word[ids_t] + pos[:L] + typ[0]
        return tm(torch.nn.functional.layer_norm(x, (c.hidden_size,), ln_w, ln_b, c.layer_norm_eps))
    return lambda: _no_grad(torch, run_torch)


def _bert_rows(torch, opts: suites.Options, rng) -> List[Dict]:
    """BERT-base forward at B1 x L128 (toy sizes with tiny): attnkit vs PyTorch, NumPy (full mode only) and
    the engines of ``bench.engines`` that are installed, all holding the same weights."""
    config = _bert_config(opts.tiny)
    E = config.hidden_size
    weights = BertModel.random_state_dict(config, rng=rng)     # what from_config does, weights kept for the engines
    model = BertModel.from_state_dict(weights, config, origin="random weights")
    B, L = 1, 16 if opts.tiny else 128
    ids = rng.integers(0, config.vocab_size, (B, L))
    emb = model.embeddings
    fns = {"attnkit": lambda: model(ids)}
    if torch is not None:
        fns["torch"] = _torch_bert(torch, model, ids)
    if not opts.quick:
        numpy_encoder = _numpy_encoder(model.encoder)

        def run_numpy():
            x = emb.word[ids] + emb.position[:L] + emb.token_type[0]
            x = R.layer_norm(x, (E,), emb.norm.weight, emb.norm.bias, config.layer_norm_eps)
            return numpy_encoder(x)
        fns["numpy"] = run_numpy
    found, skipped = engines.bert_engines(weights, config, opts.threads)
    del weights
    fns.update({e: (lambda f=f: f(ids)) for e, f in found.items()})
    c = config
    name = (f"BERT-{'tiny' if opts.tiny else 'base'} fwd {c.num_hidden_layers}L d{E} h{c.num_attention_heads} "
            f"ffn{c.intermediate_size} B{B}xL{L}")
    return _compared_rows(name, fns, B * L, opts, torch, skipped)


def run_half_model_suite(opts: suites.Options) -> List[Dict]:
    """The model suite of a half-precision run (``opts.dtype`` float16 or bfloat16): a BERT-base-sized forward
    (B1 x L128, random weights rounded to the dtype) in attnkit in the dtype, attnkit float32 with the same
    rounded weights ("attnkit fp32": the baseline of speedup_vs_fp32 and max_abs_err_vs_fp32) and PyTorch in
    the dtype. ``opts.tiny``: a 2-layer d32 model."""
    torch = _torch()
    contenders = suites.half_contenders(torch is not None)
    suites.configure(opts.threads, opts.isa, contenders)
    rng = np.random.default_rng(0)
    config = _bert_config(opts.tiny)
    dt = suites.np_dtype(opts.dtype)
    weights = {k: v.astype(dt) for k, v in BertModel.random_state_dict(config, rng=rng).items()}
    model = BertModel.from_state_dict(weights, config, dtype=dt)
    model32 = BertModel.from_state_dict({k: v.astype(np.float32) for k, v in weights.items()}, config)
    B, L = 1, 16 if opts.tiny else 128
    ids = rng.integers(0, config.vocab_size, (B, L))
    fns = {"attnkit": lambda: model(ids), suites.FP32: lambda: model32(ids)}
    if torch is not None:
        fns["torch"] = _torch_bert(torch, model32, ids, suites.torch_dtype(opts.dtype))
    c = config
    case = (f"{'BERT (toy)' if opts.tiny else 'BERT-base'} fwd {c.num_hidden_layers}L d{c.hidden_size} h{c.num_attention_heads} "
            f"ffn{c.intermediate_size} B{B}xL{L} {opts.dtype}")
    rows = _compared_rows(case, fns, B * L, opts, torch)
    for r in rows:
        r["dtype"] = suites.contender_dtype(r["contender"], opts.dtype)
    rows += llama_rows(torch, opts, rng)
    for r in rows:
        r["threads"] = opts.threads
    return rows


def run_model_suite(quick: bool, threads: int) -> List[Dict]:
    """Measure the model suite in this process with ``threads`` threads per contender; returns result rows."""
    torch = _torch()
    opts = suites.Options(quick=quick, threads=threads)
    suites.configure(threads, None, ["attnkit", "numpy"] + (["torch"] if torch is not None else []))
    rng = np.random.default_rng(0)
    rows = _encoder_rows(torch, opts, rng) + _generation_rows(opts, rng) + _bert_rows(torch, opts, rng)
    if torch is not None:
        rows += _gpt2_small_rows(torch, opts, rng) + llama_rows(torch, opts, rng) + translation_rows(torch, opts, rng)
    for r in rows:
        r["threads"] = threads
    return rows



def model_suite(opts: suites.Options) -> List[Dict]:
    """The model suite of ``python -m attnkit.bench``: run_model_suite's rows, or with a half ``--dtype``
    run_half_model_suite's (the BERT-base-sized forward in that dtype), each tagged ``suite: model``."""
    if opts.half:
        rows = run_half_model_suite(opts)
    else:
        rows = run_model_suite(quick=opts.quick or opts.tiny, threads=opts.threads)
    return [dict({"suite": "model"}, **r) for r in rows]


if __name__ == "__main__":  # pragma: no cover - manual runs
    import argparse
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    for row in run_model_suite(a.quick, a.threads):
        print(json.dumps(row))
