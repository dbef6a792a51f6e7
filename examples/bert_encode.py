"""Encode sentences with a BERT-family checkpoint (config.json + model.safetensors) on attnkit.

    python examples/bert_encode.py DIR "a first sentence" "another one"
    python examples/bert_encode.py DIR "101 7592 2088 102"      # token ids, when DIR has no tokenizer.json
    python examples/bert_encode.py --demo                         # a small random model and tokenizer

Prints each sentence's mean-pooled embedding norm and the cosine similarities between sentences.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from attnkit.models import BertConfig, BertModel


def tokenize(directory, sentences, demo=False):
    """(ids (B, L), attention_mask (B, L)): with DIR/tokenizer.json via `tokenizers`, else integer lists."""
    path = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            sys.exit("reading tokenizer.json needs the 'tokenizers' package: pip install tokenizers")
        tokenizer = Tokenizer.from_file(path)
        rows = [enc.ids for enc in tokenizer.encode_batch(sentences)]
    else:
        try:
            rows = [[int(t) for t in s.replace(",", " ").split()] for s in sentences]
        except ValueError:
            where = "the demo model has" if demo else f"{directory} has"
            sys.exit(f"{where} no tokenizer.json: pass sentences as token ids, e.g. '101 2023 102' "
                     f"(or pip install tokenizers{'' if demo else ' and add a tokenizer.json'} for text)")
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask


def write_demo_checkpoint(directory, rng):
    """A random 2-layer BERT in the Hugging Face layout, plus a word-level tokenizer (if `tokenizers` is here)."""
    from safetensors.numpy import save_file

    words = ("[PAD] [UNK] [CLS] [SEP] the a cat dog sat on mat rug sun is hot cold today and was very "
             "big small bird sings").split()
    E, F, V, layers = 64, 128, len(words), 2
    config = dict(model_type="bert", vocab_size=V, hidden_size=E, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=F, hidden_act="gelu", max_position_embeddings=64, type_vocab_size=2,
                  layer_norm_eps=1e-12, pad_token_id=0)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    tensors = BertModel.random_state_dict(BertConfig.from_dict(config), rng=rng, std=0.1)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, processors
    except ImportError:
        return
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(os.path.join(directory, "tokenizer.json"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", nargs="?", help="checkpoint directory (config.json + model.safetensors)")
    parser.add_argument("sentences", nargs="*", help="sentences (or token ids without tokenizer.json)")
    parser.add_argument("--demo", action="store_true", help="build a small random checkpoint and encode with it")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        directory, sentences = args.directory, args.sentences
        if args.demo:
            if directory is not None:           # with --demo every positional argument is a sentence
                sentences = [directory] + sentences
            directory = tmp
            write_demo_checkpoint(directory, np.random.default_rng(0))
            if not os.path.isfile(os.path.join(directory, "tokenizer.json")):
                sentences = sentences or ["2 4 6 8 3", "2 5 7 8 3"]
            sentences = sentences or ["the cat sat on the mat", "a dog sat on a rug", "the sun is very hot today"]
        if directory is None or not sentences:
            parser.error("give a checkpoint DIR and at least one sentence (or --demo)")

        model = BertModel.from_pretrained(directory)
        ids, mask = tokenize(directory, sentences, demo=args.demo)
        hidden = model(ids, attention_mask=mask)                                # (B, L, hidden)
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)  # mean over real tokens
        unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        print(f"{type(model).__name__} ({model.config.model_type}): {model.config.num_hidden_layers} layers, "
              f"hidden {model.config.hidden_size}; last_hidden_state {hidden.shape} {hidden.dtype}")
        for s, row, p in zip(sentences, mask, pooled):
            print(f"  {int(row.sum()):3d} tokens  |mean| = {np.linalg.norm(p):.4f}  {s!r}")
        if len(sentences) > 1:
            print("cosine similarities:")
            print(np.array2string(unit @ unit.T, precision=3, suppress_small=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
