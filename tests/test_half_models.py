"""Models in float16 / bfloat16 (issue 10): weights kept in half precision (packed), the KV cache in the same
dtype, against the same model in float32 (embedding cosine, logits, greedy tokens where the margins allow);
bfloat16 and float16 safetensors checkpoints, read without safetensors' NumPy API where it cannot."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import attnkit
from attnkit.models import BertModel, GPT2LMHeadModel, from_pretrained
from attnkit.models.gpt2 import GPT2Config
from attnkit.nn import Transformer, TransformerConfig
from conftest import relative_error

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
HALF = pytest.mark.parametrize("dtype", [np.dtype(np.float16), BF16], ids=["f16", "bf16"])
LOGIT_TOL = {"float16": 5e-3, "bfloat16": 4e-2}


@HALF
def test_gpt2_half_against_float32(dtype, rng):
    cfg = GPT2Config(vocab_size=97, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    m32 = GPT2LMHeadModel.from_config(cfg, rng=np.random.default_rng(0), std=0.2)
    m = GPT2LMHeadModel.from_config(cfg, rng=np.random.default_rng(0), std=0.2, dtype=dtype)
    assert m.dtype == dtype
    ids = rng.integers(0, 97, (2, 11))
    logits, logits32 = m(ids), m32(ids)
    assert logits.dtype == dtype
    assert relative_error(logits, logits32) < LOGIT_TOL[dtype.name]
    assert m.new_cache(2, 20).keys.dtype == dtype
    # greedy: the same tokens while float32's top-2 margin at each step is clearly above the rounding
    out, out32 = m.generate(ids, max_new_tokens=6), m32.generate(ids, max_new_tokens=6)
    for b in range(2):
        for t in range(11, 17):
            if out[b, t] != out32[b, t]:
                step = m32(out32[b:b + 1, :t])[0, -1].astype(np.float64)
                top = np.sort(step)[-2:]
                assert top[1] - top[0] < 0.1 * np.abs(step).max(), f"row {b} step {t}: a clear margin, different token"
                break


@HALF
def test_bert_half_against_float32(dtype, tmp_path, rng):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                        num_attention_heads=4, intermediate_size=37,
                                                        max_position_embeddings=64, initializer_range=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.save_pretrained(str(tmp_path), safe_serialization=True)
    b32, b = BertModel.from_pretrained(tmp_path), BertModel.from_pretrained(tmp_path, dtype=dtype)
    ids = rng.integers(0, 99, (2, 13))
    h32, h = b32(ids).astype(np.float64), b(ids)
    assert h.dtype == dtype
    h = h.astype(np.float64)
    cos = (h * h32).sum(-1) / np.linalg.norm(h, axis=-1) / np.linalg.norm(h32, axis=-1)
    assert cos.min() > (0.9999 if dtype == np.float16 else 0.999)


@pytest.mark.parametrize("saved", ["bfloat16", "float16"])
@HALF
def test_llama_half_checkpoint(saved, dtype, tmp_path, rng):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    hf = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf = hf.to(getattr(torch, saved)).eval()
    hf.save_pretrained(str(tmp_path))
    header = open(tmp_path / "model.safetensors", "rb").read(20000)
    assert ('"BF16"' if saved == "bfloat16" else '"F16"').encode() in header
    m32, m = from_pretrained(tmp_path), from_pretrained(tmp_path, dtype=dtype)
    assert m.dtype == dtype and m.new_cache(1, 8).keys.dtype == dtype
    ids = rng.integers(0, 97, (1, 9))
    logits, logits32 = m(ids), m32(ids)
    assert logits.dtype == np.float32          # Llama-family logits are float32 by contract (computed in dtype)
    assert relative_error(logits, logits32) < LOGIT_TOL[dtype.name]
    with torch.no_grad():
        want = hf(torch.tensor(ids)).logits.float().numpy()
    assert relative_error(logits32, want) < (2e-2 if saved == "float16" else 8e-2)   # torch computes in the saved dtype


def test_bfloat16_checkpoint_errors_name_tensor_and_file(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    path = tmp_path / "model.safetensors"
    save_file({"a.weight": torch.zeros(4, 3, dtype=torch.bfloat16), "b": torch.ones(2, dtype=torch.bfloat16)}, str(path))
    from attnkit.models._checkpoint import _load_safetensors
    t = _load_safetensors(str(path))
    assert t["a.weight"].dtype == BF16 and t["a.weight"].shape == (4, 3) and (t["b"].astype(np.float32) == 1).all()
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["b"]["data_offsets"] = [header["b"]["data_offsets"][0], header["b"]["data_offsets"][1] + 2]
    text = json.dumps(header).encode()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(len(text).to_bytes(8, "little") + text + bytes(data[8 + n:]))
    with pytest.raises(ValueError, match=r"bad\.safetensors: tensor 'b': data offsets"):
        _load_safetensors(str(bad))


@HALF
def test_transformer_from_torch_state_dict_half(dtype, rng):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = torch.nn.Transformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=48,
                              batch_first=True, dropout=0.0).eval()
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    m32, m = Transformer.from_torch_state_dict(sd, nhead=4), Transformer.from_torch_state_dict(sd, nhead=4, dtype=dtype)
    assert m.dtype == dtype
    src, tgt = rng.standard_normal((2, 5, 32)).astype(np.float32), rng.standard_normal((2, 4, 32)).astype(np.float32)
    y = m(src.astype(dtype), tgt.astype(dtype), tgt_is_causal=True)
    assert y.dtype == dtype
    assert relative_error(y, m32(src, tgt, tgt_is_causal=True)) < LOGIT_TOL[dtype.name]
