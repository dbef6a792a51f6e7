"""Checkpoints that cannot load wrong: every config field checked (type, range, consistency) with an
error naming the field and the file; broken files named with what is wrong; non-float tensors rejected
by every loader. And checkpoints that load right: every family's config as transformers writes it (default
special token ids included, even outside a small vocabulary) loads and gives transformers' outputs; special
token ids outside the vocabulary are a warning naming the field, and otherwise ignored."""
from __future__ import annotations

import json
import os
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
models = pytest.importorskip("attnkit.models")
from attnkit import nn  # noqa: E402
from test_models import hf_bert, hf_gpt2, rewrite  # noqa: E402


@pytest.fixture(scope="module")
def bert_path(tmp_path_factory):
    return hf_bert(tmp_path_factory)[1]


@pytest.fixture(scope="module")
def gpt2_path(tmp_path_factory):
    return hf_gpt2(tmp_path_factory)[1]


BERT_FIELDS = [
    ("num_hidden_layers", -1), ("num_hidden_layers", 0), ("num_hidden_layers", 2.0), ("num_hidden_layers", True),
    ("num_attention_heads", 0), ("num_attention_heads", 3), ("hidden_size", 2**70), ("hidden_size", -32),
    ("vocab_size", 0), ("vocab_size", "99"), ("intermediate_size", 0), ("max_position_embeddings", -5),
    ("type_vocab_size", 0), ("layer_norm_eps", -1), ("layer_norm_eps", 1e12), ("layer_norm_eps", float("nan")),
    ("layer_norm_eps", float("inf")), ("layer_norm_eps", "1e-12"), ("layer_norm_eps", 10**400),
    ("pad_token_id", "0"), ("pad_token_id", 1.0), ("hidden_act", 3),
]
GPT2_FIELDS = [
    ("n_layer", -1), ("n_layer", 0), ("n_head", 0), ("n_head", 5), ("n_embd", 2**70), ("n_embd", 0),
    ("n_positions", 0), ("vocab_size", -64), ("n_inner", 0), ("n_inner", 1.5), ("layer_norm_epsilon", -1),
    ("layer_norm_epsilon", 1e12), ("layer_norm_epsilon", float("nan")), ("eos_token_id", "50256"),
    ("eos_token_id", True), ("pad_token_id", 1.5), ("scale_attn_weights", 1), ("tie_word_embeddings", "yes"),
]


@pytest.mark.parametrize("name,value", BERT_FIELDS, ids=[f"{n}={v!r}"[:40] for n, v in BERT_FIELDS])
def test_bert_config_fields_are_checked(bert_path, tmp_path, name, value):
    bad = rewrite(bert_path, tmp_path / "bad", config=lambda c: dict(c, **{name: value}))
    with pytest.raises(ValueError, match=re.escape(str(bad / "config.json")) + f".*'{name}'"):
        models.BertModel.from_pretrained(bad)


@pytest.mark.parametrize("name,value", GPT2_FIELDS, ids=[f"{n}={v!r}"[:40] for n, v in GPT2_FIELDS])
def test_gpt2_config_fields_are_checked(gpt2_path, tmp_path, name, value):
    bad = rewrite(gpt2_path, tmp_path / "bad", config=lambda c: dict(c, **{name: value}))
    with pytest.raises(ValueError, match=re.escape(str(bad / "config.json")) + f".*'{name}'"):
        models.GPT2LMHeadModel.from_pretrained(bad)


def test_configs_built_in_code_are_checked_too():
    with pytest.raises(ValueError, match="num_hidden_layers"):
        models.BertConfig(vocab_size=10, num_hidden_layers=-1)
    with pytest.raises(ValueError, match="n_head"):
        models.GPT2Config(n_head=0)
    with pytest.raises(ValueError, match="layer_norm_epsilon"):
        models.GPT2Config(layer_norm_epsilon=1e12)
    models.GPT2Config(n_embd=64, n_head=4)                      # a valid one still builds


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path):
    path.write_bytes(os.urandom(64))


def _header_only(path):
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json here!}")


def _directory(path):
    path.unlink()
    path.mkdir()


def _loop(path):
    path.unlink()
    os.symlink(path.name, path)                                    # a link to itself


FILE_CASES = {
    "truncated safetensors": ("model.safetensors", _truncate, "safetensors"),
    "garbage safetensors": ("model.safetensors", _garbage, "safetensors"),
    "bad safetensors header": ("model.safetensors", _header_only, "safetensors"),
    "safetensors is a directory": ("model.safetensors", _directory, "directory"),
    "safetensors symlink loop": ("model.safetensors", _loop, "cannot be read"),
    "invalid JSON": ("config.json", lambda p: p.write_text('{"n_embd": 32,'), "not valid JSON"),
    "JSON list": ("config.json", lambda p: p.write_text("[1, 2]"), "JSON object"),
    "binary config": ("config.json", _garbage, "not (valid JSON|UTF-8)"),
    "config is a directory": ("config.json", _directory, "directory"),
    "config symlink loop": ("config.json", _loop, "cannot be read"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_broken_files_are_named(gpt2_path, tmp_path, case):
    name, damage, what = FILE_CASES[case]
    bad = rewrite(gpt2_path, tmp_path / "bad")
    damage(bad / name)
    with pytest.raises(ValueError, match=re.escape(str(bad / name)) + ".*" + what):
        models.GPT2LMHeadModel.from_pretrained(bad)


def test_sharded_checkpoint_errors(gpt2_path, tmp_path):
    bad = rewrite(gpt2_path, tmp_path / "bad")
    (bad / "model.safetensors").rename(bad / "shard-1.safetensors")
    index = bad / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match=re.escape(str(index)) + ".*weight_map"):
        models.GPT2LMHeadModel.from_pretrained(bad)
    index.write_text(json.dumps({"weight_map": {"transformer.wte.weight": "../../etc/passwd"}}))
    with pytest.raises(ValueError, match=re.escape(str(index)) + ".*not file names"):
        models.GPT2LMHeadModel.from_pretrained(bad)
    index.write_text(json.dumps({"weight_map": {"transformer.wte.weight": "shard-2.safetensors"}}))
    with pytest.raises(FileNotFoundError, match=re.escape(str(bad / "shard-2.safetensors"))):
        models.GPT2LMHeadModel.from_pretrained(bad)
    index.write_text(json.dumps({"weight_map": {"not.in.any.shard": "shard-1.safetensors"}}))
    with pytest.raises(ValueError, match="not.in.any.shard"):
        models.GPT2LMHeadModel.from_pretrained(bad)
    index.write_text(json.dumps({"weight_map": {"transformer.wte.weight": "shard-1.safetensors"}}))
    models.GPT2LMHeadModel.from_pretrained(bad)                     # the valid index loads


def test_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        models.BertModel.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "file")) + ".*not a directory"):
        models.BertModel.from_pretrained(tmp_path / "file")


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int64])
def test_transformer_state_dict_rejects_integer_and_bool_tensors(dtype):
    torch.manual_seed(0)
    model = torch.nn.Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                 dim_feedforward=24)
    state = model.state_dict()
    for key in state:                                              # every tensor, one at a time
        bad = dict(state, **{key: state[key].to(dtype)})
        with pytest.raises(ValueError, match=re.escape(key) + f".*{str(dtype).split('.')[1]}"):
            nn.Transformer.from_torch_state_dict(bad, nhead=2)
        bad_np = {k: v.numpy() for k, v in bad.items()}
        with pytest.raises(ValueError, match=re.escape(key)):
            nn.Transformer.from_torch_state_dict(bad_np, nhead=2)
    nn.Transformer.from_torch_state_dict(state, nhead=2)


# -------------------------------------------------------------------------------------------------
# Every family as transformers writes it: small sizes, the Config classes' default special token ids
# -------------------------------------------------------------------------------------------------
SMALL_DECODER = dict(hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=128)
SMALL_ENCODER = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
# family -> (transformers model class, config class, config arguments: sizes only)
FAMILIES = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(vocab_size=1000, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
    "bert": ("BertModel", "BertConfig", dict(SMALL_ENCODER, max_position_embeddings=64)),
    "roberta": ("RobertaModel", "RobertaConfig", dict(SMALL_ENCODER, max_position_embeddings=66)),
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(SMALL_DECODER, vocab_size=97)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(SMALL_DECODER, vocab_size=97)),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(SMALL_DECODER, vocab_size=97, sliding_window=6)),
}
SPECIAL = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "sep_token_id")


def outside_vocabulary(config):
    """The special token id fields of a config.json dict that lie outside [0, vocab_size) (by transformers'
    own numbers: no attnkit code)."""
    V = config["vocab_size"]
    bad = []
    for name in SPECIAL:
        value = config.get(name)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, int) and not 0 <= v < V for v in values):
            bad.append(name)
    return bad


def load_quietly(path, **kw):
    """attnkit.models.from_pretrained(path); returns (model, the messages of the UserWarnings it gave)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = models.from_pretrained(path, **kw)
    return model, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, transformers model, checkpoint directory) of one family at its Config's defaults."""
    transformers = pytest.importorskip("transformers")
    model_class, config_class, sizes = FAMILIES[request.param]
    torch.manual_seed(0)
    hf = getattr(transformers, model_class)(getattr(transformers, config_class)(**sizes)).eval()
    with torch.no_grad():                              # larger than the default init: outputs that differ per token
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp(request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.save_pretrained(str(path), safe_serialization=True)
    return request.param, hf, path


def outputs(name, model, ids, *, torch_model=False):
    """Logits (language models) or the last hidden states (encoders) of ids, as float64 NumPy."""
    if torch_model:
        with torch.no_grad():
            out = model(torch.from_numpy(ids))
        out = out.logits if hasattr(out, "logits") else out.last_hidden_state
        return out.double().numpy()
    return np.asarray(model(ids), dtype=np.float64)


def test_every_family_at_transformers_defaults_loads_and_matches(family, rng):
    from conftest import assert_close
    name, hf, path = family
    config = json.loads((path / "config.json").read_text())
    model, said = load_quietly(path)
    bad = outside_vocabulary(config)                   # GPT-2: bos/eos 50256 with a vocabulary of 1000
    assert bad == (["bos_token_id", "eos_token_id"] if name == "gpt2" else [])
    for field_name in bad:
        assert any(f"'{field_name}' = " in m and "config.json" in m for m in said), (field_name, said)
    assert len([m for m in said if "token" in m]) == (1 if bad else 0), said        # one warning, all fields
    ids = rng.integers(3, config["vocab_size"], (2, 11))
    assert_close(outputs(name, model, ids), outputs(name, hf, ids, torch_model=True), np.float32,
                 against="checkpoint", what=f"{name} outputs")


def test_special_token_ids_outside_the_vocabulary_warn_and_are_ignored(family, tmp_path, rng):
    name, _, path = family
    config = json.loads((path / "config.json").read_text())
    V = config["vocab_size"]
    llama = name in ("llama", "qwen2", "mistral")
    changes = {"bos_token_id": V, "eos_token_id": [2, V + 7] if llama else V + 7, "decoder_start_token_id": -1,
               "sep_token_id": 10**30}
    if name != "roberta":                            # RoBERTa numbers positions after its pad id (below)
        changes["pad_token_id"] = -1 if name != "bert" else V
    odd = rewrite(path, tmp_path / "odd", config=lambda c: dict(c, **changes))
    transformers = pytest.importorskip("transformers")
    assert transformers.AutoConfig.from_pretrained(str(odd)).bos_token_id == V     # transformers loads it as is
    plain, _ = load_quietly(path)
    model, said = load_quietly(odd)
    assert len(said) == 1, said
    for field_name in changes:
        assert f"'{field_name}' = " in said[0] and str(odd / "config.json") in said[0], (field_name, said)
    ids = rng.integers(3, V, (2, 9))
    np.testing.assert_array_equal(outputs(name, model, ids), outputs(name, plain, ids))   # the same network
    parsed = model.config
    for field_name in ("bos_token_id", "pad_token_id"):
        if field_name in vars(parsed) and field_name in changes:
            assert getattr(parsed, field_name) is None, field_name                      # ignored
    if llama:
        assert parsed.eos_token_id == [2]                                              # V + 7 dropped, 2 kept
    elif name == "gpt2":
        assert parsed.eos_token_id is None


def test_llama_generation_ignores_an_eos_outside_the_vocabulary(tmp_path, rng):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL_DECODER, vocab_size=97, eos_token_id=500)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.save_pretrained(str(tmp_path), safe_serialization=True)
    with pytest.warns(UserWarning, match="'eos_token_id' = 500"):
        model = models.from_pretrained(tmp_path)
    ids = rng.integers(3, 97, (1, 5))
    out = model.generate(ids, max_new_tokens=6)                         # no eos to meet: all 6 tokens
    assert out.shape == (1, 11)
    ref = torch.from_numpy(ids)
    with torch.no_grad():
        for _ in range(6):
            ref = torch.cat([ref, hf(ref).logits[:, -1].argmax(-1, keepdim=True)], 1)
    np.testing.assert_array_equal(out, ref.numpy())


def test_roberta_pad_id_numbers_positions(tmp_path_factory, tmp_path):
    _, path = hf_bert(tmp_path_factory, kind="roberta")
    neg = rewrite(path, tmp_path / "neg", config=lambda c: dict(c, pad_token_id=-1))
    with pytest.raises(ValueError, match=re.escape(str(neg / "config.json")) + ".*'pad_token_id' = -1"):
        models.from_pretrained(neg)                  # negative positions: a wrong model, refused
    big = rewrite(path, tmp_path / "big", config=lambda c: dict(c, pad_token_id=c["vocab_size"]))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        models.from_pretrained(big)                  # positions past the table, refused


def test_configs_built_in_code_warn_for_ids_outside_the_vocabulary():
    with pytest.warns(UserWarning, match="'eos_token_id' = 50256"):
        c = models.GPT2Config(vocab_size=1000, n_embd=32, n_head=4, eos_token_id=50256)
    assert c.eos_token_id is None
    with pytest.warns(UserWarning, match="'pad_token_id' = 120"):
        c = models.BertConfig(vocab_size=100, pad_token_id=120)
    assert c.pad_token_id is None


# -------------------------------------------------------------------------------------------------
# torch.nn.Transformer state dicts at torch's defaults (sequence-first, biases) and without biases
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_torch_transformer_defaults(rng, bias):
    from conftest import assert_close
    torch.manual_seed(0)
    tm = torch.nn.Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=48,
                              bias=bias).eval()                                  # batch_first=False, relu, post-LN
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    assert any(k.endswith("bias") for k in sd) == bias
    model = nn.Transformer.from_torch_state_dict(sd, nhead=4)
    src, tgt = rng.standard_normal((2, 9, 32)).astype(np.float32), rng.standard_normal((2, 6, 32)).astype(np.float32)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(6)
    with torch.no_grad():                                                        # (L, B, E) in torch's default
        ref = tm(torch.from_numpy(src).transpose(0, 1), torch.from_numpy(tgt).transpose(0, 1), tgt_mask=causal)
    out = model(src, tgt, tgt_is_causal=True)
    assert_close(out, ref.transpose(0, 1).double().numpy(), np.float32, against="torch")
    if not bias:                                     # a stray bias in a bias-free state dict is reported
        stray = dict(sd, **{"encoder.layers.0.linear1.bias": np.zeros(48, np.float32)})
        with pytest.raises(KeyError, match="encoder.layers.0.linear1.bias"):
            nn.Transformer.from_torch_state_dict(stray, nhead=4)
