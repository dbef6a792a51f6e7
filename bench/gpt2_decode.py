"""GPT-2-small float32 greedy decoding: attnkit against ONNX Runtime (and CTranslate2), same weights, same threads.

    python bench/gpt2_decode.py [--threads 2] [--new 16] [--layers 12] [--budget 3] [--cpu]

A transformers GPT2LMHeadModel with random weights (12 layers, d 768, 12 heads, vocab 50257, tied LM head) is
loaded by attnkit (GPT2LMHeadModel.from_state_dict) and handed to attnkit.bench.engines (ONNX Runtime: prompt
and step graphs exported with past keys and values, ORT_ENABLE_ALL; CTranslate2 float32). Each engine is
timed in alternating blocks beside attnkit (medians of whole generate calls: a 32-token prompt, then --new
tokens), ms per new token; the tokens must agree. --cpu: the process's CPU time per call instead of the wall
clock (time.process_time, every thread of the process; robust to other tenants' load, but it counts threads
that spin waiting for work as working), rounds of one call each, alternating.
"""
import argparse
import os
import time

import numpy as np

from attnkit.bench import engines
from attnkit.bench.harness import measure_cpu_interleaved, measure_interleaved


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--budget", type=float, default=3.0)
    ap.add_argument("--cpu", action="store_true", help="process CPU time per call instead of wall time")
    ap.add_argument("--rounds", type=int, default=5, help="with --cpu: calls per contender, alternating")
    a = ap.parse_args()
    import torch
    import transformers
    import attnkit
    from attnkit.models import GPT2Config, GPT2LMHeadModel
    torch.set_num_threads(a.threads)
    attnkit.set_num_threads(a.threads)
    shape = dict(n_layer=a.layers, n_embd=768, n_head=12, vocab_size=50257)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=1024, **shape)).eval()
    model = GPT2LMHeadModel.from_state_dict({k: v.numpy() for k, v in hf.state_dict().items()},
                                            GPT2Config(n_positions=1024, **shape))
    prompt = np.random.default_rng(0).integers(0, 50257, (1, 32))
    found, skipped = engines.gpt2_engines(hf, a.threads)
    print(f"{'process CPU time' if a.cpu else 'wall clock'}; attnkit isa {attnkit.get_config()['isa']}, {a.threads} threads, GPT-2 {a.layers}L fp32, 32 + {a.new} tokens, "
          f"load {os.getloadavg()[0]:.1f}; not measured: {skipped or 'none'}", flush=True)
    for engine, fn in found.items():
        fns = {"attnkit": lambda: model.generate(prompt, a.new), engine: lambda fn=fn: fn(prompt, a.new)}
        res = measure_cpu_interleaved(fns, a.rounds, time.process_time) if a.cpu else measure_interleaved(fns, a.budget, min_repeats=3)
        t = {k: v["median_ms"] / a.new for k, v in res.items()}
        same = np.array_equal(res["attnkit"]["out"], res[engine]["out"])
        print(f"attnkit {t['attnkit']:.1f} ms/token, {engines.version(engine)} {t[engine]:.1f} ms/token: attnkit "
              f"{t[engine] / t['attnkit']:.2f}x as fast; same tokens: {same}", flush=True)


if __name__ == "__main__":
    main()
