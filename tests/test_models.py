"""attnkit.models against Hugging Face transformers on small random models saved with save_pretrained
(safetensors) into tmp_path: hidden states and logits within the tolerance table's "checkpoint" bound
(float32: 1e-4 relative), the same greedy/beam tokens."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from conftest import assert_close

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
models = pytest.importorskip("attnkit.models")

def save(model, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(path), safe_serialization=True)
    return path


def hf_bert(tmp_path_factory, kind="bert", **kw):
    torch.manual_seed(0)
    common = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  initializer_range=0.1, attn_implementation="eager", **kw)
    if kind == "bert":
        model = transformers.BertModel(transformers.BertConfig(max_position_embeddings=64, **common))
    else:
        model = transformers.RobertaModel(transformers.RobertaConfig(max_position_embeddings=66, type_vocab_size=1,
                                                                     pad_token_id=1, **common))
    return model.eval(), save(model, tmp_path_factory.mktemp(kind))


def hf_gpt2(tmp_path_factory, name="gpt2", **kw):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=48,
                                     initializer_range=0.3, bos_token_id=0, eos_token_id=0,
                                     attn_implementation="eager", **kw)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.generation_config.eos_token_id = None                         # run exactly max_new_tokens
    model.generation_config.pad_token_id = 0
    return model, save(model, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return hf_bert(tmp_path_factory)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return hf_gpt2(tmp_path_factory)


# -------------------------------------------------------------------------------------------------
# BERT family
# -------------------------------------------------------------------------------------------------
def test_bert_matches_transformers(bert, rng):
    hf, path = bert
    model = models.BertModel.from_pretrained(path)
    ids = rng.integers(2, 99, (3, 11))
    mask = np.ones((3, 11), dtype=np.int64)
    mask[1, 7:] = 0                                                     # right padding
    mask[2, :3] = 0                                                     # left padding
    types = np.zeros((3, 11), dtype=np.int64)
    types[:, 5:] = 1
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 token_type_ids=torch.from_numpy(types)).last_hidden_state.numpy()
    out = model(ids, attention_mask=mask, token_type_ids=types)
    assert out.shape == (3, 11, 32) and out.dtype == np.float32
    assert_close(out, ref, np.float32, against="checkpoint")
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).last_hidden_state.numpy()
    assert_close(model(ids), ref, np.float32, against="checkpoint")


def test_roberta_matches_transformers(tmp_path_factory, rng):
    hf, path = hf_bert(tmp_path_factory, "roberta")
    model = models.BertModel.from_pretrained(path)
    ids = rng.integers(3, 99, (2, 9))
    mask = np.ones((2, 9), dtype=np.int64)
    ids[1, 6:], mask[1, 6:] = 1, 0                                      # pad id 1, right padding
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    assert_close(model(ids, attention_mask=mask), ref, np.float32, against="checkpoint")


def test_bert_relu_and_gelu_new(tmp_path_factory, rng):
    for act in ("relu", "gelu_new"):
        hf, path = hf_bert(tmp_path_factory, hidden_act=act, layer_norm_eps=1e-5)
        ids = rng.integers(0, 99, (2, 6))
        with torch.no_grad():
            ref = hf(torch.from_numpy(ids)).last_hidden_state.numpy()
        assert_close(models.BertModel.from_pretrained(path)(ids), ref, np.float32, against="checkpoint", what=act)


# -------------------------------------------------------------------------------------------------
# GPT-2 family
# -------------------------------------------------------------------------------------------------
def test_gpt2_logits_match_transformers(gpt2, rng):
    hf, path = gpt2
    model = models.GPT2LMHeadModel.from_pretrained(path)
    ids = rng.integers(0, 64, (2, 13))
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits.numpy()
    out = model(ids)
    assert out.shape == (2, 13, 64) and out.dtype == np.float32
    assert_close(out, ref, np.float32, against="checkpoint")


def test_gpt2_greedy_and_beam_tokens_match_transformers(gpt2, rng):
    hf, path = gpt2
    model = models.GPT2LMHeadModel.from_pretrained(path)
    ids = rng.integers(0, 64, (2, 5))
    ones = torch.ones(2, 5, dtype=torch.long)                           # id 0 is a real token here
    with torch.no_grad():
        ref = hf.generate(torch.from_numpy(ids), attention_mask=ones, max_new_tokens=16, do_sample=False).numpy()
    out = model.generate(ids, max_new_tokens=16)
    assert out.shape == (2, 21)
    np.testing.assert_array_equal(out, ref)
    assert len(np.unique(out[:, 5:])) > 4                               # a non-degenerate model
    with torch.no_grad():
        ref = hf.generate(torch.from_numpy(ids), attention_mask=ones, max_new_tokens=8, do_sample=False,
                          num_beams=3).numpy()
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=8, num_beams=3), ref)


def test_gpt2_left_padded_batch_matches_transformers(gpt2, rng):
    hf, path = gpt2
    model = models.GPT2LMHeadModel.from_pretrained(path)
    ids = rng.integers(1, 64, (3, 7))
    mask = np.ones((3, 7), dtype=np.int64)
    ids[0, :3], mask[0, :3] = 0, 0
    ids[2, :5], mask[2, :5] = 0, 0
    with torch.no_grad():
        ref = hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=10,
                          do_sample=False).numpy()
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=10, attention_mask=mask), ref)


def test_gpt2_config_variants_match_transformers(tmp_path_factory, rng):
    hf, path = hf_gpt2(tmp_path_factory, "gpt2-variant", n_inner=40, activation_function="relu",
                       scale_attn_by_inverse_layer_idx=True, tie_word_embeddings=False, layer_norm_epsilon=1e-6)
    model = models.GPT2LMHeadModel.from_pretrained(path)
    assert model.lm_head is not model.wte
    ids = rng.integers(0, 64, (2, 9))
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits.numpy()
    assert_close(model(ids), ref, np.float32, against="checkpoint")


# -------------------------------------------------------------------------------------------------
# Rejected checkpoints: the tensor or field is named
# -------------------------------------------------------------------------------------------------
def rewrite(src, dst, *, tensors=None, config=None):
    dst.mkdir()
    state = safetensors_numpy.load_file(str(src / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    state = tensors(state) if tensors else state
    cfg = config(cfg) if config else cfg
    safetensors_numpy.save_file(state, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_bad_checkpoints_are_rejected(bert, gpt2, tmp_path):
    _, bert_path = bert
    _, gpt2_path = gpt2

    def drop(key):
        return lambda s: {k: v for k, v in s.items() if k != key}

    def reshape(key):
        return lambda s: dict(s, **{key: np.zeros((3, 3), np.float32)})

    def setting(**kw):
        return lambda c: dict(c, **kw)

    cases = [
        (models.BertModel, bert_path, dict(tensors=drop("encoder.layer.1.attention.self.key.bias")), KeyError,
         "encoder.layer.1.attention.self.key.bias"),
        (models.BertModel, bert_path, dict(tensors=reshape("encoder.layer.0.output.dense.weight")), ValueError,
         r"encoder.layer.0.output.dense.weight.*\(3, 3\)"),
        (models.BertModel, bert_path, dict(config=setting(hidden_act="swish")), ValueError, "hidden_act"),
        (models.BertModel, bert_path, dict(config=setting(position_embedding_type="relative_key")), ValueError,
         "position_embedding_type"),
        (models.BertModel, bert_path, dict(config=setting(model_type="t5")), ValueError, "model_type"),
        (models.BertModel, bert_path, dict(config=setting(num_hidden_layers=3)), KeyError, "encoder.layer.2"),
        (models.GPT2LMHeadModel, gpt2_path, dict(tensors=drop("transformer.h.0.attn.c_attn.weight")), KeyError,
         "transformer.h.0.attn.c_attn.weight"),
        (models.GPT2LMHeadModel, gpt2_path, dict(tensors=reshape("transformer.wpe.weight")), ValueError,
         "transformer.wpe.weight"),
        (models.GPT2LMHeadModel, gpt2_path, dict(config=setting(activation_function="swiglu")), ValueError,
         "activation_function"),
        (models.GPT2LMHeadModel, gpt2_path, dict(config=lambda c: {k: v for k, v in c.items() if k != "n_embd"}),
         KeyError, "n_embd"),
        (models.GPT2LMHeadModel, gpt2_path, dict(config=setting(tie_word_embeddings=False)), KeyError,
         "lm_head.weight"),
        (models.GPT2LMHeadModel, gpt2_path, dict(config=setting(n_layer=1)), ValueError, "n_layer"),
    ]
    for i, (cls, src, change, error, pattern) in enumerate(cases):
        bad = rewrite(src, tmp_path / f"bad{i}", **change)
        with pytest.raises(error, match=pattern):
            cls.from_pretrained(bad)
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.BertModel.from_pretrained(tmp_path)
