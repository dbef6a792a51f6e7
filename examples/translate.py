"""Translate (or summarise) with a Hugging Face encoder-decoder checkpoint: Marian / OPUS-MT, BART, mBART,
M2M100 / NLLB, T5 / Flan-T5, run on attnkit.

    python examples/translate.py DIR "text to translate" [--beams 4] [--max-new-tokens 64]
    python examples/translate.py DIR "5 17 42 0" --ids          # token ids in, token ids out (no tokenizer)
    python examples/translate.py --demo [--beams 4]              # a tiny random Marian-layout model

DIR holds config.json, model.safetensors (or its shards) and a tokenizer: tokenizer.json (the `tokenizers`
package) or, for Marian, source.spm / target.spm / vocab.json (the optional `sentencepiece` package:
pip install 'attnkit[marian]'). Options left unset come from the checkpoint's generation_config.json, as in
transformers. --demo writes a random checkpoint with a word-level tokenizer.json, so its "translation" is
random words, but every step (loading, encoding, beam search, decoding the text) is the real one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from attnkit import models

DEMO_WORDS = ["the", "a", "cat", "dog", "sees", "runs", "small", "big", "house", "river", "and", "quickly", "red",
              "green", "der", "die", "das", "Katze", "Hund", "sieht", "läuft", "klein", "groß", "Haus", "Fluss"]


def write_demo_checkpoint(directory: str, seed: int = 0, d: int = 64, layers: int = 2, heads: int = 4,
                          ffn: int = 128) -> None:
    """A random Marian-layout checkpoint (config.json, generation_config.json, model.safetensors and, with the
    `tokenizers` package, a word-level tokenizer.json), written with NumPy only."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(seed)
    vocab = ["</s>", "<unk>"] + DEMO_WORDS + ["<pad>"]
    V, pad = len(vocab), len(vocab) - 1
    config = {"model_type": "marian", "vocab_size": V, "d_model": d, "encoder_layers": layers,
              "decoder_layers": layers, "encoder_attention_heads": heads, "decoder_attention_heads": heads,
              "encoder_ffn_dim": ffn, "decoder_ffn_dim": ffn, "max_position_embeddings": 128,
              "activation_function": "swish", "scale_embedding": True, "pad_token_id": pad, "eos_token_id": 0,
              "decoder_start_token_id": pad, "forced_eos_token_id": 0}
    generation = {"bad_words_ids": [[pad]], "decoder_start_token_id": pad, "eos_token_id": 0, "pad_token_id": pad,
                  "forced_eos_token_id": 0, "max_length": 24, "num_beams": 4, "no_repeat_ngram_size": 2}

    def w(*shape, std=0.2):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    t = {"model.shared.weight": w(V, d, std=1.0), "final_logits_bias": w(1, V, std=0.5)}
    t["model.shared.weight"][pad] = 0
    for stack in ("encoder", "decoder"):
        for i in range(layers):
            p = f"model.{stack}.layers.{i}."
            attns = ["self_attn"] + (["encoder_attn"] if stack == "decoder" else [])
            for a in attns:
                for x in ("q", "k", "v", "out"):
                    t[f"{p}{a}.{x}_proj.weight"], t[f"{p}{a}.{x}_proj.bias"] = w(d, d), w(d, std=0.02)
            for n in [a + "_layer_norm" for a in attns] + ["final_layer_norm"]:
                t[f"{p}{n}.weight"], t[f"{p}{n}.bias"] = 1 + w(d, std=0.1), w(d, std=0.02)
            t[p + "fc1.weight"], t[p + "fc1.bias"] = w(ffn, d), w(ffn, std=0.02)
            t[p + "fc2.weight"], t[p + "fc2.bias"] = w(d, ffn), w(d, std=0.02)
    os.makedirs(directory, exist_ok=True)
    save_file(t, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump(generation, f)
    try:
        from tokenizers import Tokenizer, decoders, models as tmodels, pre_tokenizers, processors
    except ImportError:
        return
    tok = Tokenizer(tmodels.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(["</s>", "<unk>", "<pad>"])
    tok.save(os.path.join(directory, "tokenizer.json"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", nargs="?", help="checkpoint directory (config.json + model.safetensors)")
    ap.add_argument("text", nargs="?", help="the text to translate (or token ids with --ids)")
    ap.add_argument("--beams", type=int, default=None, help="beam size (default: generation_config.json's)")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--ids", action="store_true", help="TEXT is space-separated token ids; print ids")
    ap.add_argument("--demo", action="store_true", help="write and run a tiny random Marian-layout model")
    a = ap.parse_args(argv)
    options = {k: v for k, v in (("num_beams", a.beams), ("max_new_tokens", a.max_new_tokens)) if v is not None}
    with tempfile.TemporaryDirectory(prefix="attnkit-translate-") as tmp:
        if a.demo:
            write_demo_checkpoint(tmp)
            directory, text = tmp, a.text or a.directory or "the small cat sees a big dog"
        else:
            if not a.directory or a.text is None:
                ap.error("give DIR and TEXT (or --demo)")
            directory, text = a.directory, a.text
        model = models.from_pretrained(directory)
        print(f"{type(model).__name__}: {model.config.encoder_layers}+{model.config.decoder_layers} layers, "
              f"d_model {model.config.d_model}, vocab {model.config.vocab_size}")
        if a.ids or model.tokenizer is None:
            ids = np.array([[int(t) for t in text.split()]])
            print(" ".join(str(int(t)) for t in model.generate(ids, **options)[0]))
        else:
            print(model.generate(text, **options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
