"""python -m attnkit.bench.ray_batch: batch embedding throughput on Ray against the single-process loop.

One random BERT (``--hidden``, ``--layers``; a word-level tokenizer) embeds ``--rows`` texts of 24-64 words
three ways on this machine: the single-process loop (``attnkit.ray.Embedder`` called batch after batch,
``--cpus`` attnkit threads), Ray Data with 1 worker of ``--cpus`` CPUs, and with ``--cpus`` workers of one
CPU each (``map_batches(Embedder, concurrency=..., num_cpus=...)`` on a local ``ray.init``).

Throughput of a Ray job once its workers run: each worker stamps the start and end of every batch it runs,
and rows/s = rows / (last end - first start) over all workers (the gaps between batches, where Ray moves
blocks and schedules the next call, and one worker starting later than the other are inside that span).
Fixed cost: the job's wall time less that span (actors started, models loaded, the output gathered).
overhead per row = 1 / Ray's rate - 1 / the loop's rate. The three configurations run in turn, ``--repeats``
rounds; medians. Needs ray (``pip install 'attnkit[ray]'``) and safetensors.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np


def write_checkpoint(directory: str, hidden: int, layers: int, vocab: int = 2000, seed: int = 0) -> None:
    """A random BERT (config.json, model.safetensors) and a word-level tokenizer.json over w0 .. w{vocab-1}."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    from attnkit.models import BertConfig, BertModel
    config = dict(model_type="bert", vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden, hidden_act="gelu",
                  max_position_embeddings=128, type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    tensors = BertModel.random_state_dict(BertConfig.from_dict(config), rng=np.random.default_rng(seed), std=0.05)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    vocab_map = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, vocab)}}
    tok = Tokenizer(models.WordLevel(vocab_map, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(os.path.join(directory, "tokenizer.json"))


def corpus(n: int, vocab: int = 2000, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{w}" for w in rng.integers(2, vocab, size=rng.integers(24, 65))) for _ in range(n)]


def time_loop(model_dir: str, texts: list, batch_size: int, cpus: int) -> float:
    """Seconds for the single-process loop over texts (the model already loaded: steady cost only)."""
    from attnkit.ray import Embedder
    emb = Embedder(model_dir, threads=cpus)
    emb({"text": np.array(texts[:batch_size], dtype=object)})  # warm-up: first-call allocations
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        emb({"text": np.array(texts[i:i + batch_size], dtype=object)})
    return time.perf_counter() - t0


class StampedEmbedder:
    """attnkit.ray.Embedder that also records, per row, its worker's pid and its batch's start and end."""

    def __init__(self, model_dir):
        from attnkit.ray import Embedder
        self.embedder = Embedder(model_dir)

    def __call__(self, batch):
        t0 = time.time()
        out = self.embedder(batch)
        n = len(out["error"])
        out.update(pid=np.full(n, os.getpid()), t0=np.full(n, t0), t1=np.full(n, time.time()))
        return out


def time_ray(model_dir: str, texts: list, batch_size: int, workers: int, cpus_per_worker: int):
    """(rows per second in the steady state, fixed seconds) of one Ray Data job over texts."""
    import ray
    ds = ray.data.from_items([{"text": t} for t in texts], override_num_blocks=max(1, len(texts) // batch_size))
    ds = ds.materialize()  # the input in the object store before the clock starts
    t0 = time.perf_counter()
    out = ds.map_batches(StampedEmbedder, fn_constructor_args=(model_dir,), batch_size=batch_size,
                         concurrency=workers, num_cpus=cpus_per_worker).select_columns(["pid", "t0", "t1"])
    cols = out.to_pandas()
    wall = time.perf_counter() - t0
    span = cols["t1"].max() - cols["t0"].min()
    assert len(cols) == len(texts), (len(cols), len(texts))
    return len(cols) / span, wall - span


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--cpus", type=int, default=2, help="CPUs in all: loop threads, Ray's num_cpus")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    import ray

    with tempfile.TemporaryDirectory() as d:
        write_checkpoint(d, a.hidden, a.layers)
        big = corpus(a.rows)
        ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = True
        configs = ((1, a.cpus), (a.cpus, 1))
        loops, runs = [], {c: [] for c in configs}
        for _ in range(a.repeats):  # in turn, so that the machine's load falls on each alike
            loops.append(time_loop(d, big, a.batch_size, a.cpus) / a.rows)
            for c in configs:
                runs[c].append(time_ray(d, big, a.batch_size, *c))
        loop = statistics.median(loops)
        rows = [{"config": f"single process, {a.cpus} threads", "ms_per_row": 1e3 * loop,
                 "rows_per_s": 1 / loop}]
        for (workers, cpw), got in runs.items():
            r = 1 / statistics.median(rate for rate, _ in got)
            fixed = [f for _, f in got]
            rows.append({"config": f"Ray, {workers} worker(s) x {cpw} CPU(s)", "ms_per_row": 1e3 * r,
                         "rows_per_s": 1 / r, "vs_loop": loop / r, "overhead_ms_per_row": 1e3 * (r - loop),
                         "fixed_s": statistics.median(fixed)})
        ray.shutdown()
    head = (f"BERT hidden {a.hidden} x {a.layers} layers, {a.rows} texts of 24-64 words, batch {a.batch_size}, "
            f"{a.cpus} CPUs; medians of {a.repeats}")
    print(head)
    print(f"{'config':34} {'rows/s':>8} {'ms/row':>8} {'vs loop':>8} {'overhead ms/row':>16} {'fixed s':>8}")
    for r in rows:
        print(f"{r['config']:34} {r['rows_per_s']:8.1f} {r['ms_per_row']:8.3f} {r.get('vs_loop', 1):8.2f}x "
              f"{r.get('overhead_ms_per_row', 0):16.3f} {r.get('fixed_s', 0):8.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"setup": head, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
