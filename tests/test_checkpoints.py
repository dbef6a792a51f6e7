"""Checkpoints that cannot load wrong: every config field checked (type, range, consistency) with an
error naming the field and the file; broken files named with what is wrong; non-float tensors rejected
by every loader."""
from __future__ import annotations

import json
import os
import re

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
    ("pad_token_id", -1), ("pad_token_id", 99), ("hidden_act", 3),
]
GPT2_FIELDS = [
    ("n_layer", -1), ("n_layer", 0), ("n_head", 0), ("n_head", 5), ("n_embd", 2**70), ("n_embd", 0),
    ("n_positions", 0), ("vocab_size", -64), ("n_inner", 0), ("n_inner", 1.5), ("layer_norm_epsilon", -1),
    ("layer_norm_epsilon", 1e12), ("layer_norm_epsilon", float("nan")), ("eos_token_id", 64),
    ("eos_token_id", -1), ("pad_token_id", 10**30), ("scale_attn_weights", 1), ("tie_word_embeddings", "yes"),
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
