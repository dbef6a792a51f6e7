"""Load time and peak memory of a quantized model against its float32 load (issue 17 item 3).

    python bench/quant_load.py [--model gpt2|bert|llama] [--layers N]

Writes a random checkpoint of GPT-2-small shape (or BERT-base, or a TinyLlama-width Llama) with
transformers' layout once, then, each in a fresh child process: from_pretrained in float32, with
quantize='int8' and 'int4', and from the int8 / int4 checkpoints that save_pretrained wrote. Prints the
load seconds, the process's peak RSS (VmHWM) and its RSS after load (what the model keeps), each above
the RSS of the bare interpreter with attnkit imported.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, os, sys, time
import psutil
import attnkit
from attnkit.models import from_pretrained
def hwm():  # VmHWM: this process's peak RSS (ru_maxrss would count the parent's RSS at fork, before exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
base = psutil.Process().memory_info().rss
args = json.loads(sys.argv[1])
t = time.perf_counter()
m = from_pretrained(args["dir"], **args["kw"])
dt = time.perf_counter() - t
rss = psutil.Process().memory_info().rss
peak = hwm()
if args.get("save"):
    m.save_pretrained(args["save"])
print(json.dumps({"seconds": dt, "rss_mib": (rss - base) / 2**20, "peak_mib": (peak - base) / 2**20}))
"""


def child(directory, save=None, **kw):
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"dir": directory, "kw": kw, "save": save})],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2", choices=("gpt2", "bert", "llama"))
    ap.add_argument("--layers", type=int, default=None)
    a = ap.parse_args()
    import torch
    import transformers
    torch.manual_seed(0)
    if a.model == "gpt2":
        m = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=a.layers or 12))
    elif a.model == "bert":
        m = transformers.BertModel(transformers.BertConfig(num_hidden_layers=a.layers or 12))
    else:
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=a.layers or 4,
            num_attention_heads=32, num_key_value_heads=4, tie_word_embeddings=False))
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "fp32")
        m.save_pretrained(src)
        del m
        rows = {"float32": child(src)}
        for q in ("int8", "int4"):
            rows[f"quantize={q} (from float32)"] = child(src, save=os.path.join(d, q), quantize=q)
            rows[f"{q} checkpoint (save_pretrained)"] = child(os.path.join(d, q))
        size = {k: sum(os.path.getsize(os.path.join(d, k, f)) for f in os.listdir(os.path.join(d, k)))
                for k in ("fp32", "int8", "int4")}
    f32 = rows["float32"]
    print(f"{a.model} ({a.layers or 'default'} layers); checkpoint bytes: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in size.items()))
    print(f"{'load':<36} {'seconds':>8} {'peak MiB':>9} {'RSS after':>9} {'RSS / fp32':>10}")
    for k, r in rows.items():
        print(f"{k:<36} {r['seconds']:8.2f} {r['peak_mib']:9.0f} {r['rss_mib']:9.0f} {r['rss_mib'] / f32['rss_mib']:10.2f}")


if __name__ == "__main__":
    main()
