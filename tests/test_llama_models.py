"""Llama, Qwen2 and Mistral checkpoints against Hugging Face transformers on tiny random models the
tests build and save (llama3 rope scaling, tied embeddings, a sliding window shorter than the
sequence): logits, greedy tokens, cache = recompute, ragged batches = one by one; sampling
(top_k=1 = greedy, seeds, the sampled distribution) and eos / streaming."""
import json
import os

import numpy as np
import pytest

import attnkit
from attnkit.models import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, from_pretrained
from attnkit.nn.sampling import SamplingConfig, choose, process_logits
from conftest import assert_close

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V = 97
COMMON = dict(vocab_size=V, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)


def build(kind, directory, seed=0, **extra):
    torch.manual_seed(seed)
    if kind == "llama":
        rope = extra.pop("rope_scaling", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
        cfg = transformers.LlamaConfig(**{**COMMON, **extra}, rope_scaling=rope, rope_theta=500000.0)
        model = transformers.LlamaForCausalLM(cfg)
    elif kind == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**COMMON, tie_word_embeddings=True, **extra))
    else:
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**COMMON, sliding_window=5, **extra))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)                     # larger than the default init: logits that differ per token
    model.eval().save_pretrained(directory, **({"max_shard_size": "50KB"} if kind == "qwen2" else {}))
    return model


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral"])
def pair(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    return request.param, build(request.param, d), from_pretrained(d), d


def hf_greedy(hf, ids, n):
    ids = torch.tensor(ids)
    with torch.no_grad():
        for _ in range(n):
            nxt = hf(ids).logits[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], 1)
    return ids.numpy()


def test_dispatch_and_layout(pair):
    kind, _, model, d = pair
    assert type(model) is {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "mistral": MistralForCausalLM}[kind]
    if kind == "qwen2":
        assert os.path.isfile(os.path.join(d, "model.safetensors.index.json"))  # sharded
        assert model.lm_head is model.embed                                     # tied
    if kind == "mistral":
        assert model.config.sliding_window == 5
    with pytest.raises(ValueError, match="model_type"):
        (LlamaForCausalLM if kind != "llama" else Qwen2ForCausalLM).from_pretrained(d)


def test_logits_match_transformers(pair, rng):
    kind, hf, model, _ = pair
    ids = rng.integers(0, V, (2, 19))                                           # longer than the window (5)
    with torch.no_grad():
        want = hf(torch.tensor(ids)).logits.numpy()
    got = model(ids)
    assert got.dtype == np.float32 and got.shape == (2, 19, V)
    assert_close(got, want, np.float32, against="checkpoint")


def test_padded_forward_matches_transformers(pair, rng):
    kind, hf, model, _ = pair
    ids = rng.integers(0, V, (2, 11))
    mask = np.ones((2, 11), np.int64)
    mask[1, 7:] = 0                                                             # right padding
    with torch.no_grad():
        want = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = model(ids, attention_mask=mask)
    assert_close(got[mask == 1], want[mask == 1], np.float32, against="checkpoint")


def test_greedy_matches_transformers_and_cache_equals_recompute(pair, rng):
    kind, hf, model, _ = pair
    ids = rng.integers(0, V, (2, 7))
    want = hf_greedy(hf, ids, 12)
    got = model.generate(ids, max_new_tokens=12)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=12, use_cache=False), want)


def test_ragged_batch_equals_one_by_one(pair, rng):
    kind, _, model, _ = pair
    prompts = [rng.integers(0, V, n) for n in (3, 9, 6)]
    alone = [model.generate(p[None], max_new_tokens=8)[0, len(p):] for p in prompts]
    L = max(map(len, prompts))
    for side in ("left", "right"):
        ids = np.zeros((3, L), np.int64)
        mask = np.zeros((3, L), np.int64)
        for b, p in enumerate(prompts):
            sl = slice(L - len(p), L) if side == "left" else slice(0, len(p))
            ids[b, sl], mask[b, sl] = p, 1
        out = model.generate(ids, max_new_tokens=8, attention_mask=mask)
        for b, p in enumerate(prompts):
            start = L if side == "left" else len(p)
            np.testing.assert_array_equal(out[b, start:start + 8], alone[b], err_msg=f"{side} row {b}")


def test_sampling_seeds_topk1_and_cache(pair, rng):
    kind, _, model, _ = pair
    ids = rng.integers(0, V, (2, 5))
    greedy = model.generate(ids, max_new_tokens=6)
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=6, do_sample=True, top_k=1, seed=3), greedy)
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.95, top_k=50, repetition_penalty=1.2)
    a = model.generate(ids, seed=7, **kw)
    np.testing.assert_array_equal(a, model.generate(ids, seed=np.random.default_rng(7), **kw))
    np.testing.assert_array_equal(a, model.generate(ids, seed=7, use_cache=False, **kw))
    assert not np.array_equal(a, model.generate(ids, seed=8, **kw))


def test_eos_and_streaming(pair, rng):
    kind, _, model, _ = pair
    ids = rng.integers(0, V, (1, 6))
    full = model.generate(ids, max_new_tokens=10)[0, 6:]
    stop = int(full[3])
    first = int(np.argmax(full == stop))                                     # the first time it appears
    steps = list(model.stream(ids, max_new_tokens=10, eos_token_id=[V + 5, stop]))
    assert len(steps) == first + 1 and all(s.shape == (1,) for s in steps)
    np.testing.assert_array_equal(np.concatenate(steps), full[:first + 1])
    out = model.generate(ids, max_new_tokens=10, eos_token_id=stop, pad_token_id=0)
    np.testing.assert_array_equal(out[0, 6:6 + first + 1], full[:first + 1])
    assert out.shape[1] == 6 + first + 1


@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": 2.0}, {"rope_type": "dynamic", "factor": 2.0}],
                         ids=["linear", "dynamic"])
def test_rope_scalings_match_transformers(rope, tmp_path, rng):
    hf = build("llama", tmp_path, rope_scaling=rope, max_position_embeddings=8)   # dynamic: 13 > 8 positions
    model = from_pretrained(tmp_path)
    ids = rng.integers(0, V, (1, 13))
    with torch.no_grad():
        want = hf(torch.tensor(ids)).logits.numpy()
    assert_close(model(ids), want, np.float32, against="checkpoint")


def test_config_errors(tmp_path):
    build("llama", tmp_path)
    path = tmp_path / "config.json"
    good = json.loads(path.read_text())
    for key, value, match in [("rope_parameters", {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}, "yarn"),
                              ("hidden_act", "gelu", "hidden_act"), ("num_key_value_heads", 3, "num_key_value_heads"),
                              ("model_type", "falcon", "model_type")]:
        path.write_text(json.dumps({**good, key: value}))
        with pytest.raises(ValueError, match=match):
            from_pretrained(tmp_path)
    path.write_text(json.dumps(good))
    model = from_pretrained(tmp_path)
    for kw, name in [({"temperature": 0}, "temperature"), ({"top_p": 1.5}, "top_p"), ({"top_k": 0}, "top_k"),
                     ({"repetition_penalty": -1.0}, "repetition_penalty")]:
        with pytest.raises(ValueError, match=name):
            model.generate([[1, 2]], max_new_tokens=2, do_sample=True, **kw)
    with pytest.raises(TypeError, match="seed"):
        model.generate([[1, 2]], max_new_tokens=2, do_sample=True, seed="x")
    with pytest.raises(ValueError, match="input_ids"):
        model([[1, V]])


def test_text_in_text_out(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    build("qwen2", tmp_path)
    vocab = {f"w{i}": i for i in range(V)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    model = from_pretrained(tmp_path)
    text = model.generate("w5 w17 w3", max_new_tokens=4)
    ids = model.generate(np.array([[5, 17, 3]]), max_new_tokens=4)[0]
    assert text == " ".join(f"w{i}" for i in ids)
    assert "".join(model.stream_text("w5 w17 w3", max_new_tokens=4)).split() == [f"w{i}" for i in ids[3:]]


# ---- sampling: the distribution -----------------------------------------------------------------
def test_sampled_distribution_matches_processed_softmax():
    """20000 draws from fixed logits after repetition_penalty, temperature, top_k and top_p: the
    frequencies match the probabilities worked out here by hand (a chi-square bound; fixed seed)."""
    logits = np.array([2.0, 1.0, 0.5, -0.3, 3.0, -1.0, 0.0, 1.5])
    seen = np.zeros(8, bool)
    seen[[0, 3]] = True
    cfg = SamplingConfig(do_sample=True, temperature=0.8, top_k=6, top_p=0.9, repetition_penalty=1.3, seed=1234)
    # by hand: penalty (2.0 -> 2/1.3, -0.3 -> -0.39), / 0.8, keep the 6 largest, then the nucleus of 0.9
    x = logits.copy()
    x[0], x[3] = 2.0 / 1.3, -0.3 * 1.3
    x = x / 0.8
    keep = np.argsort(-x)[:6]
    p = np.exp(x[keep] - x[keep].max())
    p /= p.sum()
    mass_before = np.cumsum(p) - p
    nucleus = keep[mass_before < 0.9]
    q = np.zeros(8)
    q[nucleus] = np.exp(x[nucleus] - x[nucleus].max())
    q /= q.sum()
    n = 20000
    draws = choose(process_logits(np.tile(logits, (n, 1)), cfg, np.tile(seen, (n, 1))), cfg)
    counts = np.bincount(draws, minlength=8)
    assert counts[q == 0].sum() == 0                                       # never outside top_k / top_p
    expected = n * q[q > 0]
    chi2 = ((counts[q > 0] - expected) ** 2 / expected).sum()
    assert chi2 < 25.0, (counts, expected)                                 # df <= 5: p < 1e-4 by chance


def test_config_head_dim_defaults_as_transformers():
    """LlamaConfig built by hand: head_dim follows hidden_size // num_attention_heads unless given (a fixed 128
    default made a TinyLlama-shaped config, 2048 / 32 heads, twice as wide in its attention)."""
    for E, H in ((2048, 32), (4096, 32), (64, 4), (96, 3)):
        theirs = transformers.LlamaConfig(hidden_size=E, num_attention_heads=H, num_key_value_heads=H)
        assert attnkit.models.LlamaConfig(hidden_size=E, num_attention_heads=H).head_dim == theirs.head_dim == E // H
    assert attnkit.models.LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=32).head_dim == 32
