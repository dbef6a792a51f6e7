"""Model-suite rows for a Llama-shaped decoder (issue 12): about 100M parameters with random weights
(hidden 768, 12 layers, 12 query / 4 KV heads, SwiGLU 2048, vocab 32000, tied embeddings; 2 layers
with quick, toy sizes with tiny), attnkit vs Hugging Face transformers (PyTorch eager) holding the
same weights, on the same threads:

* prefill: tokens/s of a 128-token prompt (hidden states of every token, logits of the last);
* decode: the time of one new token after a prefix of 128 and of 1024 tokens, KV cache on both sides
  (attnkit: the preallocated cache rewound after each step; transformers: DynamicCache.crop(-1)).

With ``--dtype float16|bfloat16`` the weights are rounded to that dtype: attnkit in it, "attnkit fp32" on
the same values, transformers in it ("torch") and in float32 ("torch fp32", what its users run today);
attnkit's row gets ratio_vs_torch and ratio_vs_torch_fp32.

    llama_rows(torch, opts, rng) -> rows   (``bench.models.run_model_suite`` calls it)
"""
from __future__ import annotations

import copy
from typing import Dict, List

import numpy as np

from attnkit.bench import harness, suites
from attnkit.models import LlamaConfig, LlamaForCausalLM

__all__ = ["llama_rows"]

TORCH32 = "torch fp32"  # transformers in float32 beside a half-precision run


def _shape(opts: suites.Options) -> Dict:
    if opts.tiny:
        return dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=128, vocab_size=512)
    return dict(hidden_size=768, num_hidden_layers=2 if opts.quick else 12, num_attention_heads=12,
                num_key_value_heads=4, intermediate_size=2048, vocab_size=32000)


def _row(case: str, contender: str, m: Dict, tokens: int, **extra) -> Dict:
    row = {"suite": "model", "case": case, "contender": contender, **{k: v for k, v in m.items() if k != "out"}}
    if m.get("median_ms"):
        row["tokens_per_s"] = tokens / m["median_ms"] * 1e3
    return dict(row, **extra)


def _err(res: Dict):
    """attnkit's max |difference| from transformers' logits (None when a contender failed)."""
    ours, theirs = (res.get(c, {}).get("out") for c in ("attnkit", "torch"))
    return None if ours is None or theirs is None else harness.max_abs_diff(ours, theirs)


def llama_rows(torch, opts: suites.Options, rng) -> List[Dict]:
    """The rows above; [] without torch or transformers. In a half-precision run (``opts.dtype``) the weights
    are rounded to that dtype once: attnkit runs in it, "attnkit fp32" on the same values widened (the
    baseline of speedup_vs_fp32), transformers in the dtype."""
    if torch is None:
        return []
    try:
        import transformers
    except ImportError:
        return []
    s = _shape(opts)
    prefixes = (16, 64) if opts.tiny else (128, 1024)
    max_pos = 2 * max(prefixes)
    hf_config = transformers.LlamaConfig(**s, max_position_embeddings=max_pos, tie_word_embeddings=True,
                                         rope_theta=500000.0)
    torch.manual_seed(int(rng.integers(2**31)))
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    config = LlamaConfig.from_dict(hf_config.to_dict())
    tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
    models = {"attnkit": LlamaForCausalLM.from_state_dict(tensors, config)}
    hf32 = None  # a half-precision run: transformers in float32 too (TORCH32), what a user of it runs today
    if opts.half:  # the same rounded weights everywhere (round to nearest even, as torch's .to does)
        dt = suites.np_dtype(opts.dtype)
        tensors = {k: v.astype(dt) for k, v in tensors.items()}
        models = {"attnkit": LlamaForCausalLM.from_state_dict(tensors, config, dtype=dt),
                  suites.FP32: LlamaForCausalLM.from_state_dict(
                      {k: v.astype(np.float32) for k, v in tensors.items()}, config)}
        hf32, hf = hf, copy.deepcopy(hf).to(suites.torch_dtype(opts.dtype))
    params = sum(p.numel() for p in hf.parameters())
    label = (f"llama-shaped {s['num_hidden_layers']}L d{s['hidden_size']} h{s['num_attention_heads']}/"
             f"kv{s['num_key_value_heads']} ffn{s['intermediate_size']} V{s['vocab_size']} ({params / 1e6:.0f}M)"
             + (f" {opts.dtype}" if opts.half else ""))
    rows: List[Dict] = []

    def measured(case: str, fns: Dict, tokens: int, **extra):
        res = harness.measure_contenders(fns, opts.budget, opts.min_repeats)
        ratios = harness.compare(res, **suites.compare_keys(opts))
        if res.get(TORCH32, {}).get("median_ms") and res["attnkit"].get("median_ms"):
            r32 = ratios["attnkit"]["ratio_vs_torch_fp32"] = res[TORCH32]["median_ms"] / res["attnkit"]["median_ms"]
            ratios["attnkit"]["note"] = f"{r32:.2f}x transformers in float32"
        err = _err(res)
        for c, r in res.items():
            rows.append(_row(case, c, r, tokens, **extra, **ratios[c],
                             dtype="float32" if c == TORCH32 else suites.contender_dtype(c, opts.dtype),
                             **({"max_abs_err_vs_torch": err} if c == "attnkit" else {})))

    # prefill: every token's hidden state, the last token's logits
    P = prefixes[0]
    ids = rng.integers(0, s["vocab_size"], (1, P))
    ids_t = torch.from_numpy(ids)

    def prefill(model):
        return lambda: model.logits(model.hidden_states(ids)[:, -1])

    def hf_prefill():
        with torch.inference_mode():
            return hf(ids_t, logits_to_keep=1).logits[:, -1].float().numpy()
    def hf_prefill32():
        with torch.inference_mode():
            return hf32(ids_t, logits_to_keep=1).logits[:, -1].numpy()
    measured(f"{label} prefill {P} tok", {**{c: prefill(m) for c, m in models.items()}, "torch": hf_prefill,
                                          **({TORCH32: hf_prefill32} if hf32 is not None else {})}, P)

    # decode: one token after each prefix, with the cache rewound (attnkit) / cropped (transformers)
    for prefix in prefixes:
        ids = rng.integers(0, s["vocab_size"], (1, prefix))
        token = np.array([[7]])

        def step(model):
            cache = model.new_cache(1, prefix + 8)
            model.hidden_states(ids, cache=cache)

            def run():
                out = model.logits(model.hidden_states(token, cache=cache)[:, -1])
                cache.lengths -= 1                                         # rewind: the next call redoes the step
                return out
            return run
        token_t = torch.tensor([[7]])
        pos_t = torch.tensor([[prefix]])

        def hf_step(hf_model):
            with torch.inference_mode():
                past = hf_model(torch.from_numpy(ids), use_cache=True).past_key_values

            def run():
                with torch.inference_mode():
                    out = hf_model(token_t, past_key_values=past, use_cache=True, position_ids=pos_t).logits[:, -1]
                past.crop(-1)                                              # drop the step again
                return out.float().numpy()
            return run
        measured(f"{label} decode 1 tok @{prefix}", {**{c: step(m) for c, m in models.items()}, "torch": hf_step(hf),
                                                     **({TORCH32: hf_step(hf32)} if hf32 is not None else {})}, 1,
                 prefix=prefix)
    return rows
