"""Embed a text corpus with attnkit on Ray: the same script on a laptop and on a cluster.

    python examples/ray_embed.py --demo                                  # a small random BERT, a local Ray
    python examples/ray_embed.py DIR corpus.txt --out embeddings/        # one text per line -> Parquet files
    RAY_ADDRESS=auto python examples/ray_embed.py DIR corpus.txt --out embeddings/ --workers 16

ray.init() joins the cluster named by RAY_ADDRESS (or the one `ray start` set up on this machine) and
otherwise starts a local Ray with this machine's CPUs. DIR (config.json, model.safetensors,
tokenizer.json) and the input must be readable on every node: a shared file system, or an object store
path that ray.data.read_text understands (s3://..., gs://...). Each worker loads the model once, with
--cpus-per-worker attnkit threads. Rows keep their order; a row whose text is empty gets an `error`
instead of stopping the job.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", nargs="?", help="checkpoint directory (config.json, model.safetensors, "
                                                     "tokenizer.json)")
    parser.add_argument("input", nargs="?", help="text file(s) or folder: one text per line (ray.data.read_text)")
    parser.add_argument("--out", help="folder for the Parquet output (columns text, embedding, error)")
    parser.add_argument("--workers", type=int, default=2, help="model replicas (Ray actors), default 2")
    parser.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (attnkit threads) per worker")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per model call, default 64")
    parser.add_argument("--demo", action="store_true", help="a small random BERT and a few sentences")
    args = parser.parse_args(argv)
    try:
        import ray
    except ImportError:
        sys.exit("this example needs Ray: pip install 'attnkit[ray]'")
    from attnkit.ray import Embedder

    with tempfile.TemporaryDirectory() as tmp:
        if args.demo:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from bert_encode import write_demo_checkpoint   # the random BERT + tokenizer of bert_encode.py
            write_demo_checkpoint(tmp, np.random.default_rng(0))
            args.directory = tmp
        elif args.directory is None or args.input is None:
            parser.error("give a checkpoint DIR and an INPUT (or --demo)")
        ray.init(include_dashboard=False, log_to_driver=False,
                 **({"num_cpus": args.workers * args.cpus_per_worker} if args.demo else {}))
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True        # output rows in input order
        ctx.enable_progress_bars = False
        if args.demo:
            words = "the a cat dog sat on mat rug sun is hot cold today and was very big small bird sings".split()
            rng = np.random.default_rng(1)
            texts = [" ".join(rng.choice(words, size=rng.integers(3, 12))) for _ in range(200)] + [""]
            ds = ray.data.from_items([{"text": t} for t in texts])
        else:
            ds = ray.data.read_text(args.input)
        t0 = time.perf_counter()
        out = ds.map_batches(Embedder, fn_constructor_args=(args.directory,), batch_size=args.batch_size,
                             concurrency=args.workers, num_cpus=args.cpus_per_worker)
        if args.out:
            out.write_parquet(args.out)
            n = out.count()
        else:
            rows = out.take_all()
            n = len(rows)
            for r in rows[:3]:
                print(f"{r['text'][:40]!r:44} -> embedding[:4] {np.round(r['embedding'][:4], 3)} error={r['error']}")
            bad = [r for r in rows if r["error"] is not None]
            print(f"rows with an error: {len(bad)}" + (f" (first: {bad[0]['error']!r})" if bad else ""))
        dt = time.perf_counter() - t0
        print(f"{n} rows in {dt:.1f} s on {args.workers} worker(s) x {args.cpus_per_worker} CPU(s) "
              f"({n / dt:.0f} rows/s, model loading and Ray start-up included)")
        ray.shutdown()


if __name__ == "__main__":
    main()
