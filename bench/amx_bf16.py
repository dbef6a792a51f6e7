"""bfloat16 on AMX tiles against the other bfloat16 paths and PyTorch bfloat16, side by side in one process.

    python bench/amx_bf16.py [--threads 2] [--suite linear,attention,llama] [--budget 1.0] [--layers 12]

Contenders, timed in alternating blocks (attnkit.bench.harness.measure_interleaved, medians):
  amx_bf16     attnkit with attnkit.set_isa("amx_bf16")     (tdpbf16ps tiles: linear, prefill QK^T / PV)
  avx512_bf16  attnkit with set_isa("avx512_bf16")          (vdpbf16ps: linear; q.k of decode)
  avx512       attnkit with set_isa("avx512")               (bfloat16 widened to float32, FMA)
  torch        PyTorch bfloat16 (its oneDNN / AMX kernels), same threads
Each attnkit contender holds its own packed weights / model (packed under its path, so no call repacks).
Cases: linear x (M, 768) @ W (3072, 768)^T packed at M = 1, 8, 32, 128, 512; attention prefill B1 H8 L1024 D64
and B1 H16 L2048 D128, self and causal; a Llama-shaped model (hidden 768, 12 layers, GQA 12/4, SwiGLU 2048,
vocab 32000, tied) prefill of 128 tokens and one decoded token after 128. Ratios: contender time / amx time
(> 1: AMX ahead); max |diff| from the avx512 path's output.
"""
import argparse
import os

import ml_dtypes
import numpy as np

import attnkit
from attnkit.bench.harness import measure_interleaved

BF16 = ml_dtypes.bfloat16
ISAS = ("amx_bf16", "avx512_bf16", "avx512")


def on(isa, fn):
    def run():
        attnkit.set_isa(isa)
        return fn()
    return run


def report(case, res, flops=None):
    amx = res["amx_bf16"]["median_ms"]
    ref = np.asarray(res["avx512"]["out"], np.float32)
    cells = []
    for name, r in res.items():
        err = np.abs(np.asarray(r["out"], np.float32) - ref).max()
        rate = f" {flops / r['median_ms'] / 1e6:6.0f} GF/s" if flops else ""
        cells.append(f"{name} {r['median_ms']:8.3f} ms{rate} ({r['median_ms'] / amx:4.2f}x, d {err:.1e})")
    print(f"{case:<34} " + " | ".join(cells), flush=True)


def linear_cases(a, torch):
    rng = np.random.default_rng(0)
    K, N = 768, 3072
    w = (rng.standard_normal((N, K), dtype=np.float32) * K**-0.5).astype(BF16)
    packed = {}
    for isa in ISAS:
        attnkit.set_isa(isa)
        packed[isa] = attnkit.pack_linear(w)
    tw = torch.from_numpy(w.astype(np.float32)).to(torch.bfloat16)
    for M in (1, 8, 32, 128, 512):
        x = rng.standard_normal((M, K), dtype=np.float32).astype(BF16)
        tx = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
        fns = {isa: on(isa, lambda isa=isa: attnkit.linear(x, packed[isa])) for isa in ISAS}
        fns["torch"] = lambda: torch.nn.functional.linear(tx, tw).float().numpy()
        report(f"linear M{M} K{K} N{N}", measure_interleaved(fns, a.budget), 2 * M * K * N)


def attention_cases(a, torch):
    rng = np.random.default_rng(1)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for B, H, L, D in ((1, 8, 1024, 64), (1, 16, 2048, 128)):
        q, k, v = (rng.standard_normal((B, H, L, D), dtype=np.float32).astype(BF16) for _ in range(3))
        tq, tk, tv = (torch.from_numpy(t.astype(np.float32)).to(torch.bfloat16) for t in (q, k, v))
        for causal in (False, True):
            fns = {isa: on(isa, lambda: attnkit.scaled_dot_product_attention(q, k, v, is_causal=causal)) for isa in ISAS}
            fns["torch"] = lambda: sdpa(tq, tk, tv, is_causal=causal).float().numpy()
            flops = 4 * B * H * L * L * D / (2 if causal else 1)
            report(f"sdpa B{B} H{H} L{L} D{D}{' causal' if causal else ''}", measure_interleaved(fns, a.budget), flops)


def llama_cases(a, torch):
    import transformers
    from attnkit.models import LlamaConfig, LlamaForCausalLM
    cfg = transformers.LlamaConfig(hidden_size=768, num_hidden_layers=a.layers, num_attention_heads=12,
                                   num_key_value_heads=4, intermediate_size=2048, vocab_size=32000,
                                   max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=500000.0)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval().to(torch.bfloat16)
    tensors = {k: v.float().numpy().astype(BF16) for k, v in hf.state_dict().items()}
    config = LlamaConfig.from_dict(cfg.to_dict())
    models = {}
    for isa in ISAS:
        attnkit.set_isa(isa)
        models[isa] = LlamaForCausalLM.from_state_dict(tensors, config, dtype=BF16)
    rng = np.random.default_rng(2)
    P = 128
    ids = rng.integers(0, 32000, (1, P))
    ids_t = torch.from_numpy(ids)

    def hf_prefill():
        with torch.inference_mode():
            return hf(ids_t, logits_to_keep=1).logits[:, -1].float().numpy()
    fns = {isa: on(isa, lambda m=m: m.logits(m.hidden_states(ids)[:, -1])) for isa, m in models.items()}
    fns["torch"] = hf_prefill
    report(f"llama {a.layers}L prefill {P} tok", measure_interleaved(fns, a.budget))

    token = np.array([[7]])

    def step(isa, m):
        attnkit.set_isa(isa)
        cache = m.new_cache(1, P + 8)
        m.hidden_states(ids, cache=cache)

        def run():
            out = m.logits(m.hidden_states(token, cache=cache)[:, -1])
            cache.lengths -= 1
            return out
        return run
    with torch.inference_mode():
        past = hf(ids_t, use_cache=True).past_key_values

    def hf_step():
        with torch.inference_mode():
            out = hf(torch.tensor([[7]]), past_key_values=past, use_cache=True, position_ids=torch.tensor([[P]])).logits[:, -1]
        past.crop(-1)
        return out.float().numpy()
    fns = {isa: on(isa, step(isa, m)) for isa, m in models.items()}
    fns["torch"] = hf_step
    report(f"llama {a.layers}L decode 1 tok @{P}", measure_interleaved(fns, a.budget))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--suite", default="linear,attention,llama")
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--layers", type=int, default=12)
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    attnkit.set_num_threads(a.threads)
    cfg = attnkit.get_config()
    print(f"attnkit {cfg['version']}, amx: {cfg['amx']}, default isa {cfg['isa']}; torch {torch.__version__}; "
          f"{a.threads} threads; load {os.getloadavg()[0]:.1f}")
    if "amx_bf16" not in cfg["usable_isas"]:
        raise SystemExit(f"amx_bf16 is not usable here: {cfg['amx']}")
    default = cfg["isa"]
    try:
        for s in a.suite.split(","):
            {"linear": linear_cases, "attention": attention_cases, "llama": llama_cases}[s](a, torch)
    finally:
        attnkit.set_isa(default)


if __name__ == "__main__":
    main()
