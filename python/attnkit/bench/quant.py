"""Quantized rows of the linear and model suites (``python -m attnkit.bench --quantize int8|int4``).

* linear: attnkit's quantized weight (``quantize_linear``) against attnkit's packed float32 weight
  ("attnkit fp32", the baseline of ``speedup_vs_fp32``) and PyTorch: float32 ``F.linear`` and, for int8,
  ``torch.ao.nn.quantized.dynamic.Linear`` ("torch int8": per-row dynamic activations, fbgemm), at BERT widths
  (128 rows) and at one row of a Llama-7B FFN (4096 x 11008, larger than the caches). ``max_abs_err_vs_fp32``:
  max |out - float32 output|.
* model: a BERT-base forward (B1 x L128) and GPT-2-small greedy decoding, attnkit quantized at load against
  attnkit float32 and, when installed, CTranslate2 int8 (``compute_type="int8"``) and ONNX Runtime with
  ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, BERT only); a Llama-shaped decoder (TinyLlama
  widths, 2 layers) decoding in int8 and int4, the int4 row's ``speedup_vs_int8``.

Every contender gets the same threads; attnkit and each engine are timed in alternating blocks
(``harness.measure_contenders`` / ``engines.measure_apart``).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Dict, List

import numpy as np

import attnkit
from attnkit.bench import engines, harness, suites

FP32 = "attnkit fp32"


def _rows(suite: str, case: str, res: Dict, extra: Dict = None) -> List[Dict]:
    ratios = harness.compare(res, oracle=FP32, speedup_key="speedup_vs_fp32", err_key="max_abs_err_vs_fp32")
    rows = []
    for c, r in res.items():
        row = {"suite": suite, "case": case, "contender": c, **{k: v for k, v in r.items() if k != "out"}, **ratios[c]}
        rows.append(dict(row, **(extra or {}).get(c, {})))
    return rows


def linear_rows(opts: suites.Options, qdtype: str) -> List[Dict]:
    try:
        import torch
    except ImportError:
        torch = None
    shapes = [(8, 64, 96)] if opts.tiny else ([(128, 768, 3072), (1, 4096, 11008)] if opts.quick else
                                              [(128, 768, 768), (128, 768, 3072), (128, 3072, 768),
                                               (1, 768, 3072), (8, 768, 3072), (1, 4096, 11008)])
    rng = np.random.default_rng(0)
    rows = []
    for M, K, N in shapes:
        x = rng.standard_normal((M, K), dtype=np.float32)
        w = rng.standard_normal((N, K), dtype=np.float32) * np.float32(K ** -0.5)
        b = rng.standard_normal(N, dtype=np.float32)
        qw = attnkit.quantize_linear(w, b, dtype=qdtype)
        pw = attnkit.pack_linear(w, b)
        fns = {"attnkit": lambda: attnkit.linear(x, qw), FP32: lambda: attnkit.linear(x, pw)}
        if torch is not None:
            xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            fns["torch"] = lambda: torch.nn.functional.linear(xt, wt, bt)
            if qdtype == "int8":
                try:
                    ql = torch.ao.nn.quantized.dynamic.Linear(K, N, dtype=torch.qint8)
                    fl = torch.nn.Linear(K, N)
                    with torch.no_grad():
                        fl.weight.copy_(wt)
                        fl.bias.copy_(bt)
                    ql = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(fl), {torch.nn.Linear},
                                                                dtype=torch.qint8)
                    fns["torch int8"] = lambda: ql(xt)
                except Exception:  # a build without fbgemm
                    pass
        with torch.inference_mode() if torch is not None else contextlib.nullcontext():
            res = harness.measure_contenders(fns, opts.budget, opts.min_repeats)
        case = f"linear {qdtype} M{M} K{K} N{N}"
        extra = {}
        if "torch int8" in res and res["torch int8"].get("median_ms") and res["attnkit"].get("median_ms"):
            extra["attnkit"] = {"ratio_vs_torch_int8": res["torch int8"]["median_ms"] / res["attnkit"]["median_ms"]}
        rows += _rows("linear", case, res, extra)
    return rows


def _ort_quantized_bert(torch, hf_model, threads: int, workdir: str):
    """ONNX Runtime on the BERT exported to ONNX and quantized with quantize_dynamic (int8 weights)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    fp = engines.ort_bert(torch, ort, hf_model, threads, workdir)
    del fp
    src, dst = os.path.join(workdir, "bert.onnx"), os.path.join(workdir, "bert.int8.onnx")
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    session = engines._ort_session(ort, dst, threads)
    return lambda ids: session.run(None, {"input_ids": np.asarray(ids, dtype=np.int64)})[0]


def _ct2_int8(kind: str, ctranslate2, hf_model, threads: int, workdir: str):
    options = dict(engines._ct2_options(threads), compute_type="int8")
    if kind == "bert":
        vocabulary = engines._Vocabulary(hf_model.config.vocab_size, 100 % hf_model.config.vocab_size, "[UNK]")
        enc = ctranslate2.Encoder(engines._ct2_convert(hf_model, vocabulary, workdir), **options)
        return lambda ids: np.asarray(enc.forward_batch(np.asarray(ids).tolist()).last_hidden_state)
    c = hf_model.config
    vocabulary = engines._Vocabulary(c.vocab_size, c.eos_token_id, "<|endoftext|>")
    gen = ctranslate2.Generator(engines._ct2_convert(hf_model, vocabulary, workdir), **options)

    def generate(prompt, new):
        starts = [[vocabulary.token(int(i)) for i in row] for row in np.asarray(prompt)]
        res = gen.generate_batch(starts, max_length=new, min_length=new, sampling_topk=1, beam_size=1, end_token=[],
                                 include_prompt_in_result=False)
        return np.concatenate([prompt, np.array([r.sequences_ids[0] for r in res], dtype=prompt.dtype)], axis=1)
    return generate


def model_rows(opts: suites.Options, qdtype: str) -> List[Dict]:
    from attnkit.bench.models import _bert_config
    from attnkit.models import BertModel, GPT2Config, GPT2LMHeadModel
    try:
        import torch
        import transformers
    except ImportError:
        return []
    rows, rng = [], np.random.default_rng(0)
    threads = opts.threads
    # BERT-base B1 x L128
    config = _bert_config(opts.tiny)
    weights = BertModel.random_state_dict(config, rng=rng)
    fp = BertModel.from_state_dict(weights, config)
    with attnkit.quant.quantizing(qdtype):
        qm = BertModel.from_state_dict(weights, config)
    B, L = 1, 16 if opts.tiny else 128
    ids = rng.integers(0, config.vocab_size, (B, L))
    fns = {"attnkit": lambda: qm(ids), FP32: lambda: fp(ids)}
    skipped = {}
    with tempfile.TemporaryDirectory(prefix="attnkit-qbench-") as workdir:
        hf = engines.hf_bert(torch, transformers, weights, config)
        for name, build in (("ctranslate2", lambda: _ct2_int8("bert", __import__("ctranslate2"), hf, threads, workdir)),
                            ("onnxruntime", lambda: _ort_quantized_bert(torch, hf, threads, workdir))):
            try:
                f = build()
                fns[name] = lambda f=f: f(ids)
            except Exception as e:
                skipped[name] = f"{type(e).__name__}: {e}"
        del weights
        res = engines.measure_apart(fns, opts.budget, opts.min_repeats)
    ratios = harness.compare(res, oracle=FP32, speedup_key="speedup_vs_fp32", err_key="max_abs_err_vs_fp32")
    engines.compare_with_attnkit(res, ratios)
    case = f"BERT-{'tiny' if opts.tiny else 'base'} fwd B{B}xL{L} {qdtype} (engines int8)"
    for c, r in res.items():
        rows.append({"suite": "model", "case": case, "contender": c, **{k: v for k, v in r.items() if k != "out"},
                     **ratios[c], **({"note": "; ".join(f"{e} not measured: {w}" for e, w in skipped.items())}
                                     if c == "attnkit" and skipped else {})})
    # GPT-2-small greedy
    shape = (dict(n_layer=1, n_embd=64, n_head=4, vocab_size=512) if opts.tiny else
             dict(n_layer=2 if opts.quick else 12, n_embd=768, n_head=12, vocab_size=50257))
    V = shape["vocab_size"]
    hf_config = transformers.GPT2Config(n_positions=1024, bos_token_id=V - 1, eos_token_id=V - 1, **shape)
    torch.manual_seed(0)
    hfg = transformers.GPT2LMHeadModel(hf_config).eval()
    sd = {k: v.numpy() for k, v in hfg.state_dict().items()}
    gconfig = GPT2Config(n_positions=1024, **shape)
    fpg = GPT2LMHeadModel.from_state_dict(sd, gconfig)
    with attnkit.quant.quantizing(qdtype):
        qg = GPT2LMHeadModel.from_state_dict(sd, gconfig)
    del sd
    prompt, new = rng.integers(0, V, (1, 32)), 8 if opts.quick else 32
    fns = {"attnkit": lambda: qg.generate(prompt, new), FP32: lambda: fpg.generate(prompt, new)}
    with tempfile.TemporaryDirectory(prefix="attnkit-qbench-") as workdir:
        try:
            f = _ct2_int8("gpt2", __import__("ctranslate2"), hfg, threads, workdir)
            fns["ctranslate2"] = lambda: f(prompt, new)
        except Exception as e:
            skipped["ctranslate2 gpt2"] = f"{type(e).__name__}: {e}"
        res = engines.measure_apart(fns, opts.budget, 2)
    ratios = harness.compare(res, oracle=FP32, speedup_key="speedup_vs_fp32", err_key="max_abs_err_vs_fp32")
    engines.compare_with_attnkit(res, ratios, tokens=True)
    same = bool(np.array_equal(res["attnkit"].get("out"), res[FP32].get("out")))
    case = f"gpt2-small-shaped {shape['n_layer']}L greedy 32+{new} tok {qdtype} (engines int8)"
    for c, r in res.items():
        row = {"suite": "model", "case": case, "contender": c, **{k: v for k, v in r.items() if k != "out"}, **ratios[c]}
        if r.get("median_ms"):
            row["tokens_per_s"] = new / r["median_ms"] * 1e3
            row["ms_per_token"] = r["median_ms"] / new
        if c == "attnkit":
            row["same_tokens_as_fp32"] = same
        row.pop("max_abs_err_vs_fp32", None)                     # token ids: same_tokens_* say it
        rows.append(row)
    rows += _llama_decode_rows(opts, rng)
    for r in rows:
        r["threads"] = threads
    return rows


def _llama_decode_rows(opts: suites.Options, rng) -> List[Dict]:
    """TinyLlama-1.1B's shape (22 layers, hidden 2048, 32 heads, 4 KV heads, FFN 5632, vocab 32000; 1 layer
    with quick) decoding greedily in int8 and int4 (group 128) from the same random weights, the LM head int8
    in both (the default). ms_per_token is decoding alone: (generate(prompt, 1 + new) - generate(prompt, 1)) /
    new, both timed alternately, so the 16-token prompt's prefill is not in it. With fewer layers the head's
    65.5 MB (int8 in both) would be a larger share of the bytes per token than in a real model."""
    from attnkit.models import LlamaConfig, LlamaForCausalLM
    c = (LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2) if opts.tiny else
         LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=1 if opts.quick else 22,
                     num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048))
    models = {}
    for q in ("int8", "int4"):
        with attnkit.quant.quantizing(q):
            models[q] = LlamaForCausalLM.from_config(c, rng=0)
    prompt, new = rng.integers(0, c.vocab_size, (1, 16)), 8 if opts.quick else 16
    fns = {}
    for q, m in models.items():
        fns[f"attnkit {q}"] = lambda m=m: m.generate(prompt, 1 + new)
        fns[f"attnkit {q} prompt"] = lambda m=m: m.generate(prompt, 1)
    res = harness.measure_contenders(fns, opts.budget, 3)
    case = f"llama-shaped {c.num_hidden_layers}L d{c.hidden_size} ffn{c.intermediate_size} V{c.vocab_size} greedy 16+{new}"
    rows, per_token = [], {}
    for q in models:
        r, r1 = res[f"attnkit {q}"], res[f"attnkit {q} prompt"]
        row = {"suite": "model", "case": case, "contender": f"attnkit {q}", **{k: v for k, v in r.items() if k != "out"}}
        if r.get("median_ms") and r1.get("median_ms"):
            per_token[q] = row["ms_per_token"] = (r["median_ms"] - r1["median_ms"]) / new
        rows.append(row)
    if per_token.get("int8") and per_token.get("int4"):
        rows[-1]["speedup_vs_int8"] = per_token["int8"] / per_token["int4"]
    return rows
