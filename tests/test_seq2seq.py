"""Encoder-decoder checkpoints (Marian, BART, mBART, M2M100, T5 v1.0 / v1.1) against transformers: small random
models saved by transformers itself (several configurations each), logits within 1e-4 relative, greedy and beam
search tokens equal with Hugging Face's generation options, generation_config.json defaults honoured."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
models = pytest.importorskip("attnkit.models")

V = 96
COMMON_BART = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=40, max_position_embeddings=64,
                   dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)

# name -> (config class, model class, config kwargs)
CASES = {
    "marian-swish-scaled": ("MarianConfig", "MarianMTModel",
                            dict(COMMON_BART, pad_token_id=95, eos_token_id=0, decoder_start_token_id=95,
                                 scale_embedding=True, activation_function="swish")),
    "marian-gelu-untied-separate-vocab": ("MarianConfig", "MarianMTModel",
                                          dict(COMMON_BART, pad_token_id=70, eos_token_id=0,
                                               decoder_start_token_id=70, scale_embedding=False,
                                               activation_function="gelu", share_encoder_decoder_embeddings=False,
                                               decoder_vocab_size=71, tie_word_embeddings=False)),
    "bart-gelu": ("BartConfig", "BartForConditionalGeneration",
                  dict(COMMON_BART, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                       forced_bos_token_id=None, forced_eos_token_id=None)),
    "bart-relu-scaled-untied": ("BartConfig", "BartForConditionalGeneration",
                                dict(COMMON_BART, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                     decoder_start_token_id=2, scale_embedding=True, activation_function="relu",
                                     tie_word_embeddings=False, forced_eos_token_id=None)),
    "mbart-preln": ("MBartConfig", "MBartForConditionalGeneration",
                    dict(COMMON_BART, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                         scale_embedding=True, forced_eos_token_id=None)),
    "m2m100-relu": ("M2M100Config", "M2M100ForConditionalGeneration",
                    dict(COMMON_BART, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                         scale_embedding=True, activation_function="relu")),
    "m2m100-gelu-unscaled": ("M2M100Config", "M2M100ForConditionalGeneration",
                             dict(COMMON_BART, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                  decoder_start_token_id=2, scale_embedding=False, activation_function="gelu")),
    "t5-v1.0-relu-tied": ("T5Config", "T5ForConditionalGeneration",
                          dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                               num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                               feed_forward_proj="relu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                               decoder_start_token_id=0)),
    "t5-v1.1-gated-gelu-untied-dkv": ("T5Config", "T5ForConditionalGeneration",
                                      dict(vocab_size=V, d_model=32, d_kv=12, d_ff=40, num_layers=3,
                                           num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=10,
                                           relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
                                           dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                                           decoder_start_token_id=0, tie_word_embeddings=False)),
}


def _perturb(model, seed):
    """Random weights large enough for peaked, varied distributions (transformers' init is near-uniform)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if p.dtype.is_floating_point and "positions" not in name:
                p.add_(torch.randn(p.shape, generator=g) * (0.5 if "final_logits_bias" in name else 0.15))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Every case saved once by transformers: name -> (directory, transformers model)."""
    out = {}
    for i, (name, (cfg_cls, model_cls, kw)) in enumerate(CASES.items()):
        torch.manual_seed(i)
        model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kw)).eval()
        _perturb(model, 100 + i)
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d)
        out[name] = (d, model)
    return out


def _inputs(rng, B=3, S=9, low=3, high=V - 30):
    ids = rng.integers(low, high, (B, S))
    mask = np.ones((B, S), dtype=np.int64)
    mask[1, 6:] = 0                                            # right padding
    mask[2, :2] = 0                                            # left padding
    return ids, mask


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(checkpoints, name, rng):
    d, ref = checkpoints[name]
    model = models.from_pretrained(d)
    assert type(model).__name__ == CASES[name][1]
    ids, mask = _inputs(rng)
    pad = ref.config.pad_token_id
    ids = np.where(mask == 1, ids, pad)
    start = ref.config.decoder_start_token_id
    dec = np.concatenate([np.full((3, 1), start), rng.integers(3, 60, (3, 6))], axis=1)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   decoder_input_ids=torch.tensor(dec)).logits.numpy()
    got = model(ids, attention_mask=mask, decoder_input_ids=dec)
    assert got.shape == want.shape and got.dtype == np.float32
    assert _rel(got, want) < 1e-4, _rel(got, want)
    assert np.std(want) > 0.3                                  # not a degenerate near-uniform model


@pytest.mark.parametrize("name", ["marian-swish-scaled", "bart-gelu", "m2m100-relu", "t5-v1.1-gated-gelu-untied-dkv"])
def test_sharded_and_bfloat16_checkpoints(checkpoints, name, rng, tmp_path):
    d, ref = checkpoints[name]
    ids, mask = _inputs(rng)
    ids = np.where(mask == 1, ids, ref.config.pad_token_id)
    dec = np.concatenate([np.full((3, 1), ref.config.decoder_start_token_id), rng.integers(3, 60, (3, 4))], axis=1)
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    a = models.from_pretrained(tmp_path / "sharded")(ids, attention_mask=mask, decoder_input_ids=dec)
    b = models.from_pretrained(d)(ids, attention_mask=mask, decoder_input_ids=dec)
    np.testing.assert_array_equal(a, b)
    half = type(ref)(ref.config).eval()
    half.load_state_dict(ref.state_dict())
    half = half.to(torch.bfloat16)
    half.save_pretrained(tmp_path / "bf16")
    fp32 = type(ref).from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()   # the same file, in fp32
    with torch.no_grad():
        want = fp32(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    decoder_input_ids=torch.tensor(dec)).logits.numpy()
    got = models.from_pretrained(tmp_path / "bf16")(ids, attention_mask=mask, decoder_input_ids=dec)
    assert _rel(got, want) < 1e-4


def _hf_generate(ref, ids, mask, **kw):
    with torch.no_grad():
        return ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kw).numpy()


# Random tiny models repeat one token under plain greedy search; most cases ban repeats (no_repeat_ngram_size)
# so that the tokens, the beams and the finishing steps vary.
GEN_CASES = {
    "greedy": dict(max_new_tokens=10),
    "greedy-no-repeat": dict(max_new_tokens=10, no_repeat_ngram_size=1),
    "greedy-min-new-rep-ngram": dict(max_new_tokens=10, min_new_tokens=4, repetition_penalty=1.4,
                                     no_repeat_ngram_size=2),
    "beam4": dict(max_new_tokens=9, num_beams=4, no_repeat_ngram_size=1),
    "beam4-lp-early-return2": dict(max_new_tokens=9, num_beams=4, length_penalty=0.6, early_stopping=True,
                                   num_return_sequences=2, no_repeat_ngram_size=1),
    "beam3-never-ngram-bad": dict(max_new_tokens=8, num_beams=3, early_stopping="never", length_penalty=1.5,
                                  no_repeat_ngram_size=2, bad_words_ids=[[5], [7, 8]]),
    "beam4-forced-bos-eos-rep": dict(max_length=8, num_beams=4, forced_bos_token_id=5, forced_eos_token_id=6,
                                     repetition_penalty=3.0, min_new_tokens=2),
}


def _eos_for(model, ids, mask):
    """A token that greedy search (no repeats) emits early for row 0: as eos it makes rows and beams finish at
    different steps."""
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, no_repeat_ngram_size=1, eos_token_id=None,
                         forced_eos_token_id=None)
    return int(out[0, 3])


# every option case on four families, the plain cases on the other two (the suite stays near a minute)
_GEN_PAIRS = [(n, g) for n in ("marian-swish-scaled", "bart-relu-scaled-untied", "m2m100-relu",
                               "t5-v1.1-gated-gelu-untied-dkv") for g in GEN_CASES if g not in ("greedy", "beam4")]
_GEN_PAIRS += [(n, g) for n in ("mbart-preln", "t5-v1.0-relu-tied") for g in ("greedy", "beam4")]


# attnkit's generate follows transformers 5 (its beam search was rewritten in 4.5x): older releases may differ
needs_v5 = pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5,
                              reason="generate is compared with transformers >= 5's algorithm")


@needs_v5
@pytest.mark.parametrize("name,gen", _GEN_PAIRS)
def test_generate_matches_transformers(checkpoints, name, gen, rng):
    d, ref = checkpoints[name]
    model = models.from_pretrained(d)
    ids, mask = _inputs(rng)
    ids = np.where(mask == 1, ids, ref.config.pad_token_id)
    kw = dict(GEN_CASES[gen])
    kw["eos_token_id"] = _eos_for(model, ids, mask)
    want = _hf_generate(ref, ids, mask, **kw)
    got = model.generate(ids, attention_mask=mask, **kw)
    np.testing.assert_array_equal(got, want)


@needs_v5
def test_generation_config_defaults(checkpoints, rng, tmp_path):
    """generation_config.json's defaults (beams, max_length, bad words such as Marian's pad, forced eos) are
    what a bare generate() uses, as in transformers."""
    d, ref = checkpoints["marian-swish-scaled"]
    ids, mask = _inputs(rng)
    ids = np.where(mask == 1, ids, ref.config.pad_token_id)
    model = models.from_pretrained(d)
    eos = _eos_for(model, ids, mask)
    gen = dict(num_beams=3, max_length=9, bad_words_ids=[[95]], forced_eos_token_id=eos, eos_token_id=eos,
               pad_token_id=95, decoder_start_token_id=95, length_penalty=0.8, no_repeat_ngram_size=3)
    ref.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps(gen))
    hf = type(ref).from_pretrained(tmp_path / "m").eval()
    want = _hf_generate(hf, ids, mask)
    got = models.from_pretrained(tmp_path / "m").generate(ids, attention_mask=mask)
    np.testing.assert_array_equal(got, want)
    assert got.shape[1] <= 9


def test_ragged_batch_rows_decode_as_alone(checkpoints, rng):
    d, _ = checkpoints["mbart-preln"]
    model = models.from_pretrained(d)
    ids, mask = _inputs(rng)
    ids = np.where(mask == 1, ids, 1)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=7, num_beams=3)
    for b in range(3):
        row = ids[b][mask[b] == 1][None]
        alone = model.generate(row, max_new_tokens=7, num_beams=3)
        np.testing.assert_array_equal(batch[b, :alone.shape[1]], alone[0])


def test_stream_sampling_and_cache(checkpoints, rng):
    d, _ = checkpoints["t5-v1.0-relu-tied"]
    model = models.from_pretrained(d)
    ids, mask = _inputs(rng)
    ids = np.where(mask == 1, ids, 0)
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=8)
    steps = np.stack(list(model.stream(ids, attention_mask=mask, max_new_tokens=8)), axis=1)
    np.testing.assert_array_equal(steps, greedy[:, 1:1 + steps.shape[1]])
    np.testing.assert_array_equal(greedy, model.generate(ids, attention_mask=mask, max_new_tokens=8,
                                                         use_cache=False))
    s1 = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True, seed=3)
    s2 = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True, seed=3)
    np.testing.assert_array_equal(s1, s2)
    k1 = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True, top_k=1, seed=5)
    np.testing.assert_array_equal(k1, greedy)                  # top_k=1 sampling is greedy
    many = [model.generate(ids[:1], max_new_tokens=6, do_sample=True, seed=s, temperature=2.0) for s in range(6)]
    assert len({tuple(m[0]) for m in many}) > 1                # it does sample


def test_t5_bias_is_computed_once_and_sliced(checkpoints):
    d, _ = checkpoints["t5-v1.0-relu-tied"]
    model = models.from_pretrained(d)
    bias = model.transformer.decoder.position_bias
    full = bias(12, 12)
    table = bias._table
    step = bias(1, 8, 7)
    assert bias._table is table and np.shares_memory(step, table)
    np.testing.assert_array_equal(step, full[:, :, 7:8, :8])


def test_config_fields_refused_by_name(checkpoints, tmp_path):
    d, _ = checkpoints["bart-gelu"]
    cfg = json.loads((d / "config.json").read_text())
    for field, value in [("activation_function", "tanh"), ("normalize_before", True), ("add_bias_logits", True)]:
        bad = dict(cfg, **{field: value})
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=field):
            models.Seq2SeqConfig.from_dict(bad)
    t5 = dict(json.loads((checkpoints["t5-v1.0-relu-tied"][0] / "config.json").read_text()),
              feed_forward_proj="gated-tanh")
    with pytest.raises(ValueError, match="feed_forward_proj"):
        models.Seq2SeqConfig.from_dict(t5)
    model = models.from_pretrained(d)
    with pytest.raises(ValueError, match="diversity_penalty"):
        model.generate(np.array([[5, 6, 7]]), diversity_penalty=0.5)
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(np.array([[5, 6]]))
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.generate(np.array([[5, 6, 7]]), num_beams=2, num_return_sequences=3)


# -------------------------------------------------------------------------------------------------
# Text in and out
# -------------------------------------------------------------------------------------------------
def _marian_spm_dir(tmp_path):
    """A tiny Marian checkpoint with its SentencePiece files and vocab.json, as OPUS-MT directories have."""
    spm = pytest.importorskip("sentencepiece")
    lines = ["the quick brown fox jumps over the lazy dog", "a small model translates short sentences",
             "attention is all you need", "das ist ein kleiner test", "hello world from the encoder"] * 20
    (tmp_path / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "sp"),
                                   vocab_size=40, model_type="unigram", minloglevel=2)
    proc = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(proc.get_piece_size()):
        vocab.setdefault(proc.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    d = tmp_path / "marian"
    cfg = dict(COMMON_BART, vocab_size=len(vocab), pad_token_id=vocab["<pad>"], eos_token_id=0,
               decoder_start_token_id=vocab["<pad>"], scale_embedding=True, activation_function="swish")
    torch.manual_seed(0)
    ref = transformers.MarianMTModel(transformers.MarianConfig(**cfg)).eval()
    _perturb(ref, 7)
    ref.save_pretrained(d)
    for name in ("source.spm", "target.spm"):
        (d / name).write_bytes((tmp_path / "sp.model").read_bytes())
    (d / "vocab.json").write_text(json.dumps(vocab))
    return d, ref


@needs_v5
def test_marian_sentencepiece_text(tmp_path):
    d, ref = _marian_spm_dir(tmp_path)
    tok = transformers.MarianTokenizer(vocab=str(d / "vocab.json"), source_spm=str(d / "source.spm"),
                                       target_spm=str(d / "target.spm"))
    model = models.from_pretrained(d)
    text = "the quick fox needs attention"
    assert model.tokenizer.encode(text) == tok(text).input_ids
    enc = tok([text, "hello world"], padding=True, return_tensors="np")
    kw = dict(max_new_tokens=6, num_beams=2, no_repeat_ngram_size=1)
    want = _hf_generate(ref, enc["input_ids"], enc["attention_mask"], **kw)
    got = model.generate([text, "hello world"], **kw)
    assert got == [tok.decode(w, skip_special_tokens=True) for w in want]
    assert model.generate(text, **kw) == got[0]


def test_marian_without_sentencepiece_names_it(tmp_path, monkeypatch):
    d, _ = _marian_spm_dir(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "sentencepiece", None)
    with pytest.raises(ImportError, match="sentencepiece"):
        models.from_pretrained(d)


def test_tokenizer_json_text(checkpoints, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    d, ref = checkpoints["bart-gelu"]
    words = [f"w{i}" for i in range(V)]
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w3"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tk.decoder = tokenizers.decoders.WordPiece(prefix="##")
    tk.add_special_tokens(["w0", "w1", "w2"])
    out = tmp_path / "bart"
    ref.save_pretrained(out)
    tk.save(str(out / "tokenizer.json"))
    model = models.from_pretrained(out)
    text = "w10 w11 w12 w40 w2"
    ids = np.array([tk.encode(text).ids])
    tokens = model.generate(ids, max_new_tokens=6, no_repeat_ngram_size=1)
    assert model.generate(text, max_new_tokens=6, no_repeat_ngram_size=1) == tk.decode(tokens[0].tolist(),
                                                                                          skip_special_tokens=True)
    with pytest.raises(TypeError, match="tokenizer"):
        models.from_pretrained(checkpoints["bart-gelu"][0]).generate("w10 w11")
