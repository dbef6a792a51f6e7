"""Generate text with a GPT-2-family checkpoint (config.json + model.safetensors) on attnkit, with a KV cache.

    python examples/gpt2_generate.py DIR --prompt "Once upon a time" --max-new-tokens 40
    python examples/gpt2_generate.py DIR --prompt "464 3290 318" --num-beams 4   # ids, without tokenizer.json
    python examples/gpt2_generate.py --demo                                       # a small random model
    python examples/gpt2_generate.py DIR --prompt "Once upon a time" --quantize int8   # int8 weights

Prints the continuation, tokens/s with the cache, and (with --compare, and always with --demo) without it,
checking both give the same tokens. Text prompts need DIR/tokenizer.json and `pip install tokenizers`;
the --demo model has no tokenizer, so its --prompt is token ids.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from attnkit.models import GPT2LMHeadModel


def write_demo_checkpoint(directory, rng, *, vocab=256, E=64, layers=2, heads=4, positions=256):
    """A random GPT-2 in the Hugging Face layout (Conv1D weights stored (in, out), tied output embedding)."""
    from safetensors.numpy import save_file

    config = dict(model_type="gpt2", vocab_size=vocab, n_embd=E, n_layer=layers, n_head=heads, n_positions=positions,
                  activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    shapes = {"wte.weight": (vocab, E), "wpe.weight": (positions, E)}
    for i in range(layers):
        shapes.update({f"h.{i}.attn.c_attn.weight": (E, 3 * E), f"h.{i}.attn.c_attn.bias": (3 * E,),
                       f"h.{i}.attn.c_proj.weight": (E, E), f"h.{i}.attn.c_proj.bias": (E,),
                       f"h.{i}.mlp.c_fc.weight": (E, 4 * E), f"h.{i}.mlp.c_fc.bias": (4 * E,),
                       f"h.{i}.mlp.c_proj.weight": (4 * E, E), f"h.{i}.mlp.c_proj.bias": (E,)})
    tensors = {"transformer." + k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in shapes.items()}
    for ln in [f"h.{i}.ln_{j}" for i in range(layers) for j in (1, 2)] + ["ln_f"]:
        tensors[f"transformer.{ln}.weight"] = np.ones(E, np.float32)
        tensors[f"transformer.{ln}.bias"] = np.zeros(E, np.float32)
    save_file(tensors, os.path.join(directory, "model.safetensors"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", nargs="?", help="checkpoint directory (config.json + model.safetensors)")
    parser.add_argument("--prompt", default=None, help="text (with DIR/tokenizer.json) or space-separated ids")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--eos", type=int, default=None, help="stop at this token id")
    parser.add_argument("--compare", action="store_true", help="also decode without the KV cache and time it")
    parser.add_argument("--demo", action="store_true", help="build a small random checkpoint and generate")
    parser.add_argument("--quantize", choices=("int8", "int4"), default=None,
                        help="quantize every linear layer (and the LM head, in int8) as the model loads")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.directory
        if args.demo:
            directory = tmp
            write_demo_checkpoint(directory, np.random.default_rng(0))
            args.prompt = args.prompt or "17 42 99 3 250"
            args.compare = True                  # the demo always checks the cache against recomputing
        if directory is None or args.prompt is None:
            parser.error("give a checkpoint DIR and --prompt (or --demo)")

        tokenizer = None
        if os.path.isfile(os.path.join(directory, "tokenizer.json")):
            try:
                from tokenizers import Tokenizer
            except ImportError:
                sys.exit("reading tokenizer.json needs the 'tokenizers' package: pip install tokenizers")
            tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
            ids = np.array([tokenizer.encode(args.prompt).ids], dtype=np.int64)
        else:
            where = "the --demo model has" if args.demo else f"{directory} has"
            try:
                ids = np.array([[int(t) for t in args.prompt.replace(",", " ").split()]], dtype=np.int64)
            except ValueError:
                sys.exit(f"{where} no tokenizer.json, so --prompt must be token ids, e.g. --prompt '17 42 99' "
                         f"(for text, use a checkpoint with tokenizer.json and pip install tokenizers)")
            if ids.size == 0 or ids.min() < 0:
                sys.exit("--prompt: give at least one token id, each >= 0")

        model = GPT2LMHeadModel.from_pretrained(directory, quantize=args.quantize,
                                                group_size=32 if args.quantize == "int4" and args.demo else None)
        c = model.config
        print(f"GPT-2: {c.n_layer} layers, {c.n_embd} hidden, {c.n_head} heads, vocab {c.vocab_size}; "
              f"prompt of {ids.shape[1]} tokens")
        t0 = time.perf_counter()
        out = model.generate(ids, args.max_new_tokens, num_beams=args.num_beams, eos_token_id=args.eos)
        dt = time.perf_counter() - t0
        new = out[0, ids.shape[1]:]
        print("new ids:", " ".join(map(str, new.tolist())))
        if tokenizer is not None:
            print("text:", tokenizer.decode(out[0].tolist()))
        print(f"with KV cache:    {args.max_new_tokens / dt:8.1f} tokens/s")
        if args.compare:
            t0 = time.perf_counter()
            again = model.generate(ids, args.max_new_tokens, num_beams=args.num_beams, eos_token_id=args.eos,
                                   use_cache=False)
            dt = time.perf_counter() - t0
            print(f"recomputing:      {args.max_new_tokens / dt:8.1f} tokens/s   "
                  f"(same tokens: {bool(np.array_equal(out, again))})")
            if not np.array_equal(out, again):
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
