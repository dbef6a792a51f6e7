"""Incremental decoding: the KV cache gives exactly the tokens that recomputing the prefix gives; beam search
(beam 1 = greedy, wide beams = exhaustive search); ragged batches decode like their rows alone."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

nn = pytest.importorskip("attnkit.nn")
models = pytest.importorskip("attnkit.models")


# -------------------------------------------------------------------------------------------------
# The search loops on a toy model whose next-token logits depend on the last token only
# -------------------------------------------------------------------------------------------------
class MarkovState:
    def __init__(self, table, last):
        self.table, self.last = table, np.asarray(last)

    def first_logits(self):
        return self.table[self.last]

    def step(self, tokens):
        self.last = tokens
        return self.table[tokens]

    def reorder(self, rows):
        self.last = self.last[rows]


def log_probs(table):
    return nn.generation.log_softmax(table)


def exhaustive_best(table, start, n, eos=None, pad=None):
    """The best continuation by summed log-probability (sequences may end at eos), by enumeration."""
    lp, V = log_probs(table), table.shape[0]
    best, best_seq = -np.inf, None
    for seq in itertools.product(range(V), repeat=n):
        score, prev, out = 0.0, start, []
        for tok in seq:
            score += lp[prev, tok]
            out.append(tok)
            prev = tok
            if tok == eos:
                break
        if score > best + 1e-12:
            best, best_seq = score, out + [pad] * (n - len(out))
    return best_seq


@pytest.mark.parametrize("eos", [None, 2])
def test_wide_beam_search_is_exhaustive(rng, eos):
    V, N = 4, 3
    table = 2.0 * rng.standard_normal((V, V))
    starts = np.array([0, 1, 3])
    state = MarkovState(table, starts)
    out = nn.beam_search(state, state.first_logits(), N, num_beams=V ** N, eos_token_id=eos, pad_token_id=eos,
                         length_penalty=0.0)
    for r, s in enumerate(starts):
        assert out[r].tolist() == exhaustive_best(table, s, N, eos, eos), f"row {r}"


def test_beam_one_is_greedy_and_greedy_stops_at_eos(rng):
    V = 6
    table = rng.standard_normal((V, V))
    starts = np.arange(V)
    greedy = nn.greedy_search(MarkovState(table, starts), table[starts], 7)
    beam = nn.beam_search(MarkovState(table, starts), table[starts], 7, num_beams=1)
    np.testing.assert_array_equal(greedy, beam)
    prev = starts                                                       # greedy really is argmax every step
    for t in range(7):
        np.testing.assert_array_equal(greedy[:, t], table[prev].argmax(1))
        prev = greedy[:, t]
    eos = int(greedy[0, 2])
    out = nn.greedy_search(MarkovState(table, starts), table[starts], 7, eos_token_id=eos, pad_token_id=5)
    first_eos = list(greedy[0]).index(eos)
    assert out[0, first_eos] == eos and np.all(out[0, first_eos + 1:] == 5)


# -------------------------------------------------------------------------------------------------
# Encoder-decoder
# -------------------------------------------------------------------------------------------------
def make_seq2seq(rng, *, norm_first=False, dtype=np.float32):
    config = nn.TransformerConfig(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                                  dim_feedforward=64, norm_first=norm_first, final_norm=norm_first,
                                  src_vocab_size=30, tgt_vocab_size=25, dtype=np.dtype(dtype).name)
    model = nn.Transformer.from_config(config, rng=rng)
    model.generator = nn.Generator(np.asarray(model.generator.weight) * 4, model.generator.bias)  # peaked, varied choices
    return model


def reference_greedy(model, src, n, bos, padding=None):
    """Greedy decoding by running the full model on the whole prefix at every step."""
    tgt = np.full((src.shape[0], 1), bos)
    for _ in range(n):
        h = model(src, tgt, src_key_padding_mask=padding, memory_key_padding_mask=padding, tgt_is_causal=True)
        tgt = np.concatenate([tgt, model.generator(h[:, -1]).argmax(-1)[:, None]], axis=1)
    return tgt


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_seq2seq_greedy_cache_equals_recompute(rng, norm_first):
    model = make_seq2seq(rng, norm_first=norm_first)
    src = rng.integers(0, 30, (3, 9))
    padding = np.zeros((3, 9), dtype=bool)
    padding[1, 6:] = True
    padding[2, :2] = True
    cached = model.generate(src, 12, bos_token_id=1, src_key_padding_mask=padding)
    assert cached.shape == (3, 13) and np.all(cached[:, 0] == 1)
    np.testing.assert_array_equal(cached, model.generate(src, 12, bos_token_id=1, src_key_padding_mask=padding,
                                                         use_cache=False))
    np.testing.assert_array_equal(cached, reference_greedy(model, src, 12, 1, padding))
    assert len(np.unique(cached[:, 1:])) > 3                             # not a degenerate repetition
    np.testing.assert_array_equal(cached, model.generate(src, 12, bos_token_id=1, src_key_padding_mask=padding,
                                                         num_beams=1))


def test_seq2seq_beam_search(rng):
    model = make_seq2seq(rng)
    src = rng.integers(0, 30, (2, 7))
    padding = np.array([[False] * 7, [False] * 4 + [True] * 3])
    greedy = model.generate(src, 8, bos_token_id=0, src_key_padding_mask=padding)
    state = nn.transformer._Seq2SeqDecoding(model, model.encode(src, src_key_padding_mask=padding), padding, 9,
                                            True)
    beam1 = nn.beam_search(state, state.step(np.zeros(2, dtype=np.int64)), 8, num_beams=1)
    np.testing.assert_array_equal(greedy[:, 1:], beam1)
    beams = model.generate(src, 8, bos_token_id=0, src_key_padding_mask=padding, num_beams=4)
    np.testing.assert_array_equal(beams, model.generate(src, 8, bos_token_id=0, src_key_padding_mask=padding,
                                                        num_beams=4, use_cache=False))

    def score(tgt):                                                     # sum of log-probs of the new tokens
        h = model(src, tgt[:, :-1], src_key_padding_mask=padding, memory_key_padding_mask=padding,
                  tgt_is_causal=True)
        lp = nn.generation.log_softmax(model.generator(h))
        return np.take_along_axis(lp, tgt[:, 1:, None], axis=2)[..., 0].sum(1)

    assert np.all(score(beams) >= score(greedy) - 1e-9)                 # the beam finds at least greedy's


def test_seq2seq_eos_and_errors(rng):
    model = make_seq2seq(rng)
    src = rng.integers(0, 30, (2, 5))
    free = model.generate(src, 10, bos_token_id=1)
    eos = int(free[0, 3])
    out = model.generate(src, 10, bos_token_id=1, eos_token_id=eos, pad_token_id=0)
    first = list(out[0, 1:]).index(eos) + 1
    np.testing.assert_array_equal(out[0, :first + 1], free[0, :first + 1])
    assert np.all(out[0, first + 1:] == 0)
    bare = nn.Transformer(model.encoder, model.decoder)
    with pytest.raises(ValueError, match="tgt_embed"):
        bare.generate(src, 3, bos_token_id=1)
    with pytest.raises(ValueError, match="src"):
        bare(src, np.zeros((2, 3), dtype=np.int64))


# -------------------------------------------------------------------------------------------------
# GPT-2 (random weights in the Hugging Face layout; no transformers needed)
# -------------------------------------------------------------------------------------------------
def random_gpt2(rng, *, vocab=48, E=32, layers=2, heads=4, positions=64, std=0.3):
    config = models.GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=E, n_layer=layers, n_head=heads)
    t = {"transformer.wte.weight": rng.normal(0, std, (vocab, E)),
         "transformer.wpe.weight": rng.normal(0, std, (positions, E)),
         "transformer.ln_f.weight": 1 + 0.1 * rng.standard_normal(E),
         "transformer.ln_f.bias": 0.1 * rng.standard_normal(E)}
    for i in range(layers):
        p = f"transformer.h.{i}."
        shapes = {"attn.c_attn.weight": (E, 3 * E), "attn.c_attn.bias": (3 * E,), "attn.c_proj.weight": (E, E),
                  "attn.c_proj.bias": (E,), "mlp.c_fc.weight": (E, 4 * E), "mlp.c_fc.bias": (4 * E,),
                  "mlp.c_proj.weight": (4 * E, E), "mlp.c_proj.bias": (E,)}
        t.update({p + k: rng.normal(0, std, s) for k, s in shapes.items()})
        for ln in ("ln_1", "ln_2"):
            t[f"{p}{ln}.weight"] = 1 + 0.1 * rng.standard_normal(E)
            t[f"{p}{ln}.bias"] = 0.1 * rng.standard_normal(E)
    return models.GPT2LMHeadModel.from_state_dict({k: v.astype(np.float32) for k, v in t.items()}, config)


def test_gpt2_cache_equals_recompute(rng):
    model = random_gpt2(rng)
    ids = rng.integers(0, 48, (3, 6))
    cached = model.generate(ids, 20)
    assert cached.shape == (3, 26) and np.array_equal(cached[:, :6], ids)
    np.testing.assert_array_equal(cached, model.generate(ids, 20, use_cache=False))
    seq = ids                                                           # the full forward, one step at a time
    for _ in range(20):
        seq = np.concatenate([seq, model(seq)[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(cached, seq)
    assert len(np.unique(cached[:, 6:])) > 5


def test_gpt2_ragged_batch_decodes_like_single_rows(rng):
    model = random_gpt2(rng)
    prompts = [rng.integers(0, 48, n) for n in (5, 2, 7)]
    L = 7
    left = np.zeros((3, L), dtype=np.int64)
    mask = np.zeros((3, L), dtype=np.int64)
    right = np.zeros((3, L), dtype=np.int64)
    for b, p in enumerate(prompts):
        left[b, L - len(p):], mask[b, L - len(p):] = p, 1
        right[b, :len(p)] = p
    singles = [model.generate(p[None], 9)[0] for p in prompts]
    for use_cache in (True, False):
        out = model.generate(left, 9, attention_mask=mask, use_cache=use_cache)
        for b, p in enumerate(prompts):
            np.testing.assert_array_equal(out[b, L - len(p):], singles[b])
            assert np.all(out[b, : L - len(p)] == 0)
        out = model.generate(right, 9, attention_mask=mask[:, ::-1], use_cache=use_cache)   # right padding
        for b, p in enumerate(prompts):
            np.testing.assert_array_equal(out[b, : len(p) + 9], singles[b])
    beams = model.generate(left, 6, attention_mask=mask, num_beams=3)
    for b, p in enumerate(prompts):
        np.testing.assert_array_equal(beams[b, L - len(p):], model.generate(p[None], 6, num_beams=3)[0])


def test_gpt2_beam_search(rng):
    model = random_gpt2(rng)
    ids = rng.integers(0, 48, (2, 4))
    greedy = model.generate(ids, 10)
    state = models.gpt2._GPT2Decoding(model, ids, np.full(2, 4), 14, True)
    np.testing.assert_array_equal(greedy[:, 4:], nn.beam_search(state, state.start(), 10, num_beams=1))
    beams = model.generate(ids, 10, num_beams=4)
    np.testing.assert_array_equal(beams, model.generate(ids, 10, num_beams=4, use_cache=False))

    def score(seq):
        lp = nn.generation.log_softmax(model(seq))
        return np.take_along_axis(lp[:, 3:-1], seq[:, 4:, None], axis=2)[..., 0].sum(1)

    assert np.all(score(beams) >= score(greedy) - 1e-6)


def test_gpt2_generate_errors(rng):
    model = random_gpt2(rng, positions=16)
    with pytest.raises(ValueError, match="n_positions"):
        model.generate(np.zeros((1, 10), dtype=np.int64), 7)
    with pytest.raises(ValueError, match="attention_mask"):
        model.generate(np.zeros((1, 4), dtype=np.int64), 2, attention_mask=np.array([[1, 0, 1, 1]]))
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(np.zeros((1, 4)), 2)


def test_model_suite_imports_without_torch():
    """The benchmark's model suite must stay importable (torch rows skipped) where torch is missing."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None\n"
            "import attnkit.bench.models as m\n"
            "assert m._torch() is None and callable(m.run_model_suite)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


# -------------------------------------------------------------------------------------------------
# Beam search's top-k: every class of input against a full stable sort (value down, index up)
# -------------------------------------------------------------------------------------------------
def _sorted_topk(x, k):
    return np.array([np.lexsort((np.arange(x.shape[1]), -row))[:min(k, x.shape[1])] for row in x])


_TOPK_N = (1, 5, 64, 4095, 4096, 4097, 4096 + 63, 8191, 4 * 58101)      # around the grouped path's 64 x 64 start


@pytest.mark.parametrize("kind", ["normal", "ties", "neg_inf", "all_equal", "few_finite", "pos_inf", "float64"])
@pytest.mark.parametrize("n", _TOPK_N)
def test_topk_matches_a_full_stable_sort(n, kind):
    rng = np.random.default_rng(n)
    for rows, k in ((1, 1), (3, 2), (8, 8), (2, 16), (3, 64), (2, 65), (1, 200)):
        x = rng.standard_normal((rows, n)).astype(np.float32)
        if kind == "ties":
            x = np.round(x * 2) / 2                                         # many equal scores at the boundary
        elif kind == "neg_inf":
            x[:, ::3] = -np.inf
        elif kind == "all_equal":
            x[:] = 0.5
        elif kind == "few_finite":                                         # a forced token: one finite score
            x[:] = -np.inf
            x[:, n // 2] = 0.0
        elif kind == "pos_inf":
            x[:, 7::50] = np.inf
        elif kind == "float64":
            x = x.astype(np.float64)
        got = nn.generation._topk(x, k)
        np.testing.assert_array_equal(got, _sorted_topk(x, k), err_msg=f"rows {rows}, k {k}")


def test_topk_ranks_nan_last():
    x = np.random.default_rng(0).standard_normal((2, 4 * 58101)).astype(np.float32)
    x[0, 5] = np.nan
    x[1, -1] = np.nan
    got = nn.generation._topk(x, 8)
    clean = np.where(np.isnan(x), -np.inf, x)
    np.testing.assert_array_equal(got, _sorted_topk(clean, 8))


def test_log_softmax_into_a_reused_buffer_gives_the_same_bits(rng):
    logits = (rng.standard_normal((6, 1000)) * 5).astype(np.float32)
    m = logits.max(axis=-1, keepdims=True)
    ref = logits - (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))
    buf = np.full_like(logits, np.nan)
    out = nn.generation.log_softmax(logits, np.float32, out=buf)
    assert out is buf
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(nn.generation.log_softmax(logits, np.float32), ref)
    exact = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(nn.generation.log_softmax(logits), exact, rtol=1e-12, atol=1e-12)
