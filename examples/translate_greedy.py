"""Greedy (or beam) decoding with an encoder-decoder Transformer loaded from a PyTorch state dict file.

The file (.safetensors, read without torch; or .pt/.pth, read with torch) holds a ``torch.nn.Transformer``
under ``transformer.`` plus the token embeddings and output layer of a translation model:

    transformer.encoder.layers.0.self_attn.in_proj_weight ...   torch.nn.Transformer(batch_first=True)
    src_embed.weight (V_src, d)   tgt_embed.weight (V_tgt, d)    scaled by sqrt(d) + sinusoidal positions
    generator.weight (V_tgt, d)   generator.bias (V_tgt,)

    python examples/translate_greedy.py model.safetensors --nhead 8 --src "5 17 42 3" --bos 1 --eos 2
    python examples/translate_greedy.py --demo       # a small random model (built in torch when installed)

With --demo and torch installed, the same model is also decoded greedily in PyTorch and the tokens compared.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

import numpy as np

from attnkit import nn

D_MODEL, NHEAD, LAYERS, FFN, SRC_VOCAB, TGT_VOCAB = 64, 4, 2, 128, 40, 36


def load_state_dict(path):
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        return load_file(path)
    import torch
    return {k: v.numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}


def load_translator(path, nhead, activation="relu", norm_first=False):
    """attnkit's Transformer with the paper's embeddings and output Linear from one state dict file."""
    sd = load_state_dict(path)
    model = nn.Transformer.from_torch_state_dict(sd, nhead=nhead, activation=activation, norm_first=norm_first,
                                                 prefix="transformer.")
    model.src_embed = nn.Embeddings(sd["src_embed.weight"], positions="sinusoidal")
    model.tgt_embed = nn.Embeddings(sd["tgt_embed.weight"], positions="sinusoidal")
    model.generator = nn.Generator(sd["generator.weight"], sd.get("generator.bias"))
    return model


def build_torch_demo(path, seed=0):
    """A random translation model in PyTorch, saved as safetensors; returns a greedy decoder for comparison."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    torch.set_num_threads(1)                                             # a small model: one thread is plenty

    class Translator(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.src_embed = torch.nn.Embedding(SRC_VOCAB, D_MODEL)
            self.tgt_embed = torch.nn.Embedding(TGT_VOCAB, D_MODEL)
            self.transformer = torch.nn.Transformer(D_MODEL, NHEAD, LAYERS, LAYERS, FFN, dropout=0.0,
                                                    batch_first=True)
            self.generator = torch.nn.Linear(D_MODEL, TGT_VOCAB)
            pos = torch.arange(512, dtype=torch.float64)[:, None]
            inv = torch.exp(-math.log(10000.0) * torch.arange(0, D_MODEL, 2, dtype=torch.float64) / D_MODEL)
            pe = torch.zeros(512, D_MODEL, dtype=torch.float64)
            pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * inv), torch.cos(pos * inv)
            self.register_buffer("pe", pe.float(), persistent=False)

        def embed(self, table, ids):
            return table(ids) * math.sqrt(D_MODEL) + self.pe[: ids.shape[1]]

        @torch.no_grad()
        def greedy(self, src, n, bos):
            memory = self.transformer.encoder(self.embed(self.src_embed, src))
            tgt = torch.full((src.shape[0], 1), bos, dtype=torch.long)
            for _ in range(n):
                mask = torch.nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
                h = self.transformer.decoder(self.embed(self.tgt_embed, tgt), memory, tgt_mask=mask, tgt_is_causal=True)
                tgt = torch.cat([tgt, self.generator(h[:, -1]).argmax(-1, keepdim=True)], dim=1)
            return tgt.numpy()

    model = Translator().eval()
    with torch.no_grad():                                                # varied tokens from random weights:
        for name, p in model.transformer.named_parameters():            # non-trivial norm scales,
            if "norm" in name and name.endswith("weight"):
                p.add_(0.3 * torch.randn_like(p))
        model.generator.weight.mul_(8.0)                                 # peaked outputs
        model.src_embed.weight.mul_(D_MODEL ** -0.5)                     # unit scale after * sqrt(d)
        model.tgt_embed.weight.mul_(D_MODEL ** -0.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return lambda src, n, bos: model.greedy(torch.from_numpy(src), n, bos)


def build_numpy_demo(path, seed=0):
    """The same layout with NumPy only (no torch installed)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    E, F = D_MODEL, FFN
    t = {"src_embed.weight": (SRC_VOCAB, E), "tgt_embed.weight": (TGT_VOCAB, E), "generator.weight": (TGT_VOCAB, E),
         "generator.bias": (TGT_VOCAB,)}
    for stack, attns in (("encoder", ["self_attn"]), ("decoder", ["self_attn", "multihead_attn"])):
        for i in range(LAYERS):
            p = f"transformer.{stack}.layers.{i}."
            for a in attns:
                t.update({p + a + ".in_proj_weight": (3 * E, E), p + a + ".in_proj_bias": (3 * E,),
                          p + a + ".out_proj.weight": (E, E), p + a + ".out_proj.bias": (E,)})
            t.update({p + "linear1.weight": (F, E), p + "linear1.bias": (F,), p + "linear2.weight": (E, F),
                      p + "linear2.bias": (E,)})
            for n in range(1, len(attns) + 2):
                t.update({f"{p}norm{n}.weight": (E,), f"{p}norm{n}.bias": (E,)})
        t.update({f"transformer.{stack}.norm.weight": (E,), f"transformer.{stack}.norm.bias": (E,)})
    tensors = {k: (1.0 + 0.3 * rng.standard_normal(s) if "norm" in k and k.endswith("weight")
                   else np.zeros(s) if k.endswith("bias")
                   else rng.normal(0, 0.15, s)).astype(np.float32) for k, s in t.items()}
    tensors["generator.weight"] *= 8.0
    save_file(tensors, path)
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("state_dict", nargs="?", help=".safetensors or .pt file (layout above)")
    parser.add_argument("--nhead", type=int, default=None, help="attention heads (not stored in a state dict)")
    parser.add_argument("--activation", default="relu", choices=["relu", "gelu"])
    parser.add_argument("--norm-first", action="store_true")
    parser.add_argument("--src", action="append", help="source token ids, space-separated (repeat for a batch)")
    parser.add_argument("--bos", type=int, default=1)
    parser.add_argument("--eos", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--demo", action="store_true", help="build a small random model and decode with it")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        if args.demo:
            args.state_dict, args.nhead = os.path.join(tmp, "translator.safetensors"), NHEAD
            try:
                import torch  # noqa: F401
                reference = build_torch_demo(args.state_dict)
            except ImportError:
                build_numpy_demo(args.state_dict)
            args.src = args.src or ["3 14 15 9 26 5", "35 8 9 7 9"]
        if args.state_dict is None or args.nhead is None or not args.src:
            parser.error("give STATE_DICT, --nhead and --src (or --demo)")

        model = load_translator(args.state_dict, args.nhead, args.activation, args.norm_first)
        rows = [[int(t) for t in s.replace(",", " ").split()] for s in args.src]
        width = max(map(len, rows))
        src = np.zeros((len(rows), width), dtype=np.int64)
        padding = np.ones((len(rows), width), dtype=bool)                   # True = padded (PyTorch)
        for i, r in enumerate(rows):
            src[i, : len(r)], padding[i, : len(r)] = r, False
        out = model.generate(src, args.max_new_tokens, bos_token_id=args.bos, eos_token_id=args.eos,
                             src_key_padding_mask=padding if padding.any() else None, num_beams=args.num_beams)
        c = model.config
        print(f"Transformer: d_model {c.d_model}, {c.nhead} heads, {c.num_encoder_layers}+{c.num_decoder_layers} "
              f"layers; {'beam ' + str(args.num_beams) if args.num_beams > 1 else 'greedy'} decoding")
        for s, o in zip(args.src, out):
            print(f"  {s}  ->  {' '.join(map(str, o.tolist()))}")
        if reference is not None and args.num_beams == 1 and args.eos is None:
            same = all(np.array_equal(reference(src[i:i + 1, : len(r)], args.max_new_tokens, args.bos)[0], out[i])
                       for i, r in enumerate(rows))
            print(f"PyTorch greedy decoding gives the same tokens: {same}")
            if not same:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
