"""Each example runs end to end on the small random model it builds with --demo."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, *args, timeout=120):
    p = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"{name} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def test_bert_encode_demo():
    pytest.importorskip("safetensors")
    pytest.importorskip("tokenizers")
    out = run_example("bert_encode.py", "--demo")
    assert "last_hidden_state (3, " in out and "cosine similarities" in out


def test_gpt2_generate_demo():
    pytest.importorskip("safetensors")
    out = run_example("gpt2_generate.py", "--demo", "--max-new-tokens", "12")
    assert "new ids:" in out and "(same tokens: True)" in out


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_gpt2_generate_demo_quantized(quantize):
    pytest.importorskip("safetensors")
    out = run_example("gpt2_generate.py", "--demo", "--max-new-tokens", "12", "--quantize", quantize)
    assert "new ids:" in out and "(same tokens: True)" in out


def test_translate_greedy_demo():
    pytest.importorskip("safetensors")
    pytest.importorskip("torch")
    out = run_example("translate_greedy.py", "--demo")
    assert "PyTorch greedy decoding gives the same tokens: True" in out


def test_translate_demo():
    pytest.importorskip("safetensors")
    pytest.importorskip("tokenizers")
    out = run_example("translate.py", "--demo", "--beams", "2", "der Hund sieht die Katze")
    lines = out.strip().splitlines()
    assert lines[0].startswith("MarianMTModel: 2+2 layers") and len(lines[1].split()) > 2
    words = set(__import__("re").findall(r"\S+", lines[1]))
    assert words <= {"the", "a", "cat", "dog", "sees", "runs", "small", "big", "house", "river", "and", "quickly",
                     "red", "green", "der", "die", "das", "Katze", "Hund", "sieht", "läuft", "klein", "groß",
                     "Haus", "Fluss"}                          # decoded words, special tokens skipped
    ids = run_example("translate.py", "--demo", "--ids", "3 4 5 0").strip().splitlines()[1].split()
    assert ids[0] == "27" and ids[-1] == "0"                   # decoder start (pad), ..., forced eos


def test_examples_explain_text_prompts_without_a_tokenizer():
    # a text prompt for a model without tokenizer.json: a one-line explanation, not a traceback
    pytest.importorskip("safetensors")
    import subprocess, sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "examples" / "gpt2_generate.py"
    res = subprocess.run([sys.executable, str(script), "--demo", "--prompt", "Once upon a time"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "token ids" in res.stderr and "tokenizers" in res.stderr and "/tmp" not in res.stderr


def test_llama_generate_demo():
    out = run_example("llama_generate.py", "--demo", "--max-new-tokens", "6")
    assert len(out.split()) == 4 + 6                                      # the prompt, then the streamed tokens
    out = run_example("llama_generate.py", "--demo", "--max-new-tokens", "6", "--sample")
    assert len(out.split()) == 4 + 6


def test_ray_embed_demo():
    pytest.importorskip("ray.data", reason="examples/ray_embed.py needs ray: pip install 'attnkit[ray]'")
    pytest.importorskip("tokenizers")
    pytest.importorskip("safetensors")
    out = run_example("ray_embed.py", "--demo", timeout=300)
    assert "201 rows in" in out and "rows with an error: 1 (first: 'empty text')" in out
