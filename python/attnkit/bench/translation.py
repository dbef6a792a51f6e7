"""Model-suite rows for translation (issue 18): a Marian-base-shaped encoder-decoder with random weights
(6 + 6 layers, d 512, 8 heads, FFN 2048, vocab 58101 with the pad last, as OPUS-MT models; 1 + 1 layers with
quick, toy sizes with tiny), attnkit vs Hugging Face transformers (PyTorch eager) and, when installed,
CTranslate2's Translator (float32), all holding the same weights, on the same threads:

* translate: encode a 24-token source, then exactly 32 new tokens (8 with tiny; min_new_tokens = max_new_tokens), greedy
  and 4 beams, batch 1 and 8; milliseconds per call and per sentence;
* step cost: one decoding step of attnkit (KV cache on, the encoder's K/V projected once per generate call)
  after 64 target tokens against after 8: near 1 when nothing grows but the self-attention over the cache.

    translation_rows(torch, opts, rng) -> rows   (``bench.models.run_model_suite`` calls it)
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Dict, List

import numpy as np

from attnkit.bench import engines, harness, suites

__all__ = ["translation_rows", "marian_base_config"]

SOURCE_LEN, NEW_TOKENS = 24, 32


def marian_base_config(opts: suites.Options) -> Dict:
    """transformers.MarianConfig arguments of the bench model (no forced eos at max_length: CTranslate2 has
    none, and every contender then decodes the same free 32 tokens)."""
    if opts.tiny:
        shape = dict(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=512)
    else:
        n = 1 if opts.quick else 6
        shape = dict(d_model=512, encoder_layers=n, decoder_layers=n, encoder_attention_heads=8,
                     decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, vocab_size=58101)
    V = shape["vocab_size"]
    return dict(shape, max_position_embeddings=512, pad_token_id=V - 1, decoder_start_token_id=V - 1,
                eos_token_id=0, forced_eos_token_id=None, scale_embedding=True, activation_function="swish",
                share_encoder_decoder_embeddings=True)


class _MarianVocabulary:
    """What CTranslate2's Marian converter reads from a tokenizer: tokens in id order ("</s>" 0, "<unk>" 1,
    "t<id>", "<pad>" last, which the converter drops: the decoder starts from a zero embedding instead)."""

    eos_token, unk_token, pad_token, bos_token = "</s>", "<unk>", "<pad>", None

    def __init__(self, size: int):
        self.size = size

    def token(self, i: int) -> str:
        return {0: "</s>", 1: "<unk>", self.size - 1: "<pad>"}.get(i, f"t{i}")

    def get_vocab(self) -> Dict[str, int]:
        return {self.token(i): i for i in range(self.size)}


def _ct2_translator(ctranslate2, hf_model, threads: int, workdir: str, new: int):
    """CTranslate2's Translator on the converted model: fn(ids (B, S), beams) -> (B, 1 + n) ids, the decoder
    start (pad) first as transformers returns them."""
    vocab = _MarianVocabulary(hf_model.config.vocab_size)
    translator = ctranslate2.Translator(engines._ct2_convert(hf_model, vocab, workdir), **engines._ct2_options(threads))
    start = hf_model.config.decoder_start_token_id

    def translate(ids, beams: int):
        tokens = [[vocab.token(int(i)) for i in row] for row in ids]
        res = translator.translate_batch(tokens, beam_size=beams, max_decoding_length=new,
                                         min_decoding_length=new, return_end_token=True)
        ids = vocab.get_vocab()
        rows = [[start] + [ids[t] for t in r.hypotheses[0]] for r in res]
        return np.array([r + [0] * (1 + new - len(r)) for r in rows])
    return translate


def _step_cost(model, rng, lengths=(8, 64), repeats: int = 30) -> Dict:
    """attnkit's decoding step (batch 1, greedy state) after each of ``lengths`` target tokens: median ms,
    the cache rewound after every timed step."""
    from attnkit.nn.generation import GenerationConfig
    t = model.transformer
    src = rng.integers(2, model.config.vocab_size - 1, (1, SOURCE_LEN))
    cfg = GenerationConfig(max_length=max(lengths) + 2)
    out = {}
    for n in lengths:
        state, logits, _ = t._start(src, None, cfg, model.config.vocab_size - 1, True)
        for _ in range(n - 1):                                     # the cache now holds n target positions
            state.step(np.argmax(logits, axis=1))
        tok = np.argmax(logits, axis=1)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            state.step(tok)
            times.append((time.perf_counter() - t0) * 1e3)
            state.cache.lengths -= 1                               # rewind: the next step overwrites the row
        out[n] = float(np.median(times))
    return out


def translation_rows(torch, opts: suites.Options, rng, *, batches=None, beam_sizes=(1, 4),
                     step_cost: bool = True) -> List[Dict]:
    """The rows above; ``batches`` / ``beam_sizes`` / ``step_cost`` pick a part of them (default: all)."""
    try:
        import transformers
    except ImportError:
        return []
    from attnkit.models import MarianMTModel
    kw = marian_base_config(opts)
    torch.manual_seed(int(rng.integers(2**31)))
    hf = transformers.MarianMTModel(transformers.MarianConfig(**kw)).eval()
    rows: List[Dict] = []
    with tempfile.TemporaryDirectory(prefix="attnkit-translate-") as workdir:
        hf_dir = os.path.join(workdir, "marian")
        with engines._no_progress_bars():
            hf.save_pretrained(hf_dir)
        model = MarianMTModel.from_pretrained(hf_dir)
        V = kw["vocab_size"]
        new = 8 if opts.tiny else NEW_TOKENS
        found = engines._imports("ctranslate2")
        translate_ct2, skipped = None, {}
        if isinstance(found, str):
            skipped["ctranslate2"] = found
        else:
            try:
                translate_ct2 = _ct2_translator(found[0], hf, opts.threads, os.path.join(workdir, "ct2"), new)
            except Exception as e:                                 # pragma: no cover - engine trouble
                skipped["ctranslate2"] = f"error: {type(e).__name__}: {e}"
        shape = (f"marian-base-shaped {kw['encoder_layers']}+{kw['decoder_layers']}L d{kw['d_model']} "
                 f"h{kw['encoder_attention_heads']} V{V}")
        if batches is None:
            batches = (1,) if opts.tiny else (1, 8)
        for batch in batches:
            src = rng.integers(2, V - 1, (batch, SOURCE_LEN))
            src[:, -1] = 0                                         # </s> ends a Marian source
            src_t = torch.from_numpy(src)
            for beams in beam_sizes:
                gen = dict(max_new_tokens=new, min_new_tokens=new, num_beams=beams)

                def run_hf(gen=gen):
                    with torch.inference_mode():
                        return hf.generate(src_t, attention_mask=torch.ones_like(src_t), **gen).numpy()
                fns = {"attnkit": lambda gen=gen: model.generate(src, **gen), "torch": run_hf}
                if translate_ct2 is not None:
                    fns["ctranslate2"] = lambda beams=beams: translate_ct2(src, beams)
                res = engines.measure_apart(fns, opts.budget, min_repeats=2)
                ratios = harness.compare(res)
                engines.compare_with_attnkit(res, ratios, tokens=True)
                same = bool(np.array_equal(res["attnkit"]["out"], res["torch"]["out"]))
                ratios["attnkit"].update(same_tokens=same, note="; ".join(filter(None, [
                    f"same tokens as transformers: {same}", engines.describe_skipped(skipped)])))
                label = (f"{shape} translate {SOURCE_LEN}+{new} tok "
                         f"{'greedy' if beams == 1 else f'{beams} beams'} batch {batch}")
                for c, r in res.items():
                    row = {"suite": "model", "case": label, "contender": c,
                           **{k: v for k, v in r.items() if k != "out"}, **ratios.get(c, {})}
                    if r.get("median_ms"):
                        row["ms_per_sentence"] = r["median_ms"] / batch
                    rows.append(row)
        if not step_cost:
            return rows
        steps = _step_cost(model, rng, repeats=5 if opts.tiny else 30)
        rows.append({"suite": "model", "case": f"{shape} decoding step after 64 vs 8 target tokens",
                     "contender": "attnkit", "median_ms": steps[64], "step_ms_at_8": steps[8],
                     "step_ratio_64_vs_8": steps[64] / steps[8],
                     "note": f"one greedy step: {steps[8]:.2f} ms after 8 tokens, {steps[64]:.2f} ms after 64 "
                             f"({steps[64] / steps[8]:.2f}x); the encoder's K/V are projected once per call"})
    return rows


if __name__ == "__main__":  # pragma: no cover - manual runs
    import argparse
    import json

    import torch as _torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, action="append", help="batch sizes (repeatable; default 1 and 8)")
    ap.add_argument("--beams", type=int, action="append", help="beam sizes (repeatable; default 1 and 4)")
    ap.add_argument("--no-step", action="store_true", help="leave out the step-cost row")
    a = ap.parse_args()
    o = suites.Options(quick=a.quick, tiny=a.tiny, threads=a.threads)
    suites.configure(a.threads, None, ["attnkit", "torch"])
    for row in translation_rows(_torch, o, np.random.default_rng(0), batches=a.batch,
                                beam_sizes=tuple(a.beams or (1, 4)), step_cost=not a.no_step):
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                          if k not in ("breakdown_ms",)}), flush=True)
