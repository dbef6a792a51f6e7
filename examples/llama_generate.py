"""Generate with a Llama / Qwen2 / Mistral checkpoint (Hugging Face layout), streaming the tokens.

    python examples/llama_generate.py DIR --prompt "Once upon a time" [--max-new-tokens 40] [--sample]
    python examples/llama_generate.py --demo        # a tiny random Llama built in memory

With ``tokenizers`` installed and DIR/tokenizer.json present the prompt is text; otherwise pass token ids
(``--prompt "1 15 27"``).
"""
import argparse
import sys

import numpy as np

from attnkit.models import LlamaConfig, LlamaForCausalLM, from_pretrained


def demo_model():
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    return LlamaForCausalLM.from_config(config, rng=0, std=0.2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", nargs="?")
    ap.add_argument("--prompt", default="1 2 3 4")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--sample", action="store_true", help="top-p sampling (temperature 0.8, top_p 0.9, seed 0)")
    ap.add_argument("--demo", action="store_true", help="a tiny random model instead of DIR")
    args = ap.parse_args(argv)
    if args.demo:
        model = demo_model()
    elif args.directory:
        model = from_pretrained(args.directory)
    else:
        ap.error("give a checkpoint DIR or --demo")
    options = dict(do_sample=True, temperature=0.8, top_p=0.9, seed=0) if args.sample else {}
    if model.tokenizer is not None:
        print(args.prompt, end="", flush=True)
        for piece in model.stream_text(args.prompt, args.max_new_tokens, **options):
            print(piece, end="", flush=True)
    else:
        ids = np.array([[int(t) for t in args.prompt.split()]])
        print(" ".join(map(str, ids[0])), end="", flush=True)
        for tok in model.stream(ids, args.max_new_tokens, **options):
            print(f" {int(tok[0])}", end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
