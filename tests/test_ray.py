"""attnkit.ray (issue 19): Embedder and Generator against Hugging Face transformers in one process, then on a
real local Ray cluster of two nodes (ray.cluster_utils.Cluster): the same results as one process, rows in
order with their ids, a worker killed mid-run replaced with no row lost or repeated, bad rows reported per row.
Skipped when ray (or torch + transformers, which build the tiny checkpoints and the reference) is missing."""
import os

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="attnkit.ray needs ray: pip install 'attnkit[ray]'")
pytest.importorskip("ray.data")
torch = pytest.importorskip("torch", reason="the tiny checkpoints and the reference are built with torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from attnkit.ray import Embedder, Generator, worker_cpus  # noqa: E402

V = 97
WORDS = ["[PAD]", "[UNK]"] + [f"w{i}" for i in range(2, V)]


def save_tokenizer(directory):
    """A word-level tokenizer over WORDS (id i = WORDS[i]), split on whitespace: tokenizer.json."""
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.save(os.path.join(directory, "tokenizer.json"))


def texts(n, seed, lo=1, hi=12):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS[2:], size=rng.integers(lo, hi + 1))) for _ in range(n)]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("bert"))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=64)
    transformers.BertModel(cfg, add_pooling_layer=False).eval().save_pretrained(d)
    save_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("llama"))
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   eos_token_id=2, bos_token_id=1, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # larger than the default init: greedy tokens that differ per prompt
    model.eval().save_pretrained(d)
    save_tokenizer(d)
    return d


def ids_of(text):
    return [WORDS.index(w) for w in text.split()]


def torch_embeddings(model_dir, batch):
    """sentence-transformers' recipe in torch, one row at a time (no padding): mean over tokens, L2 norm."""
    model = transformers.BertModel.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for t in batch:
            h = model(torch.tensor([ids_of(t)])).last_hidden_state[0]
            out.append(torch.nn.functional.normalize(h.mean(0), dim=0).numpy())
    return np.stack(out)


def torch_continuations(model_dir, prompts, n):
    model = transformers.LlamaForCausalLM.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([ids_of(p)])
            new = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0,
                                 eos_token_id=2)[0, ids.shape[1]:].tolist()
            new = new[:new.index(2)] if 2 in new else new
            out.append(" ".join(WORDS[i] for i in new))
    return out


# ---------------------------------------------------------------- one process, against transformers
def test_embedder_matches_sentence_transformers_recipe(bert_dir):
    batch = {"id": np.arange(9), "text": np.array(texts(9, 0), dtype=object)}
    got = Embedder(bert_dir)(batch)
    assert got["embedding"].dtype == np.float32 and got["embedding"].shape == (9, 32)
    np.testing.assert_allclose(got["embedding"], torch_embeddings(bert_dir, batch["text"]), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got["embedding"], axis=1), 1, atol=1e-5)
    assert list(got["id"]) == list(range(9)) and all(e is None for e in got["error"])


def test_embedder_hidden_states_and_cls(bert_dir):
    batch = {"text": np.array(texts(5, 1), dtype=object)}
    model = transformers.BertModel.from_pretrained(bert_dir).eval()
    hidden = Embedder(bert_dir, pooling="none")(batch)["embedding"]
    cls = Embedder(bert_dir, pooling="cls", normalize=False, output_column="vec")(batch)["vec"]
    with torch.no_grad():
        for i, t in enumerate(batch["text"]):
            ref = model(torch.tensor([ids_of(t)])).last_hidden_state[0].numpy()
            assert hidden[i].shape == ref.shape
            np.testing.assert_allclose(hidden[i], ref, atol=2e-5)
            np.testing.assert_allclose(cls[i], ref[0], atol=2e-5)


def test_embedder_bfloat16(bert_dir):
    batch = {"text": np.array(texts(6, 2), dtype=object)}
    got = Embedder(bert_dir, dtype="bfloat16")(batch)["embedding"]
    ref = torch_embeddings(bert_dir, batch["text"])
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() < 0.05 and np.abs(got - ref).max() > 0  # bfloat16 weights: close, not equal


def test_generator_matches_transformers_greedy(llama_dir):
    prompts = texts(6, 3, 1, 9)
    got = Generator(llama_dir, max_new_tokens=6)({"prompt": np.array(prompts, dtype=object)})
    assert list(got["generated_text"]) == torch_continuations(llama_dir, prompts, 6)
    assert len({t for t in got["generated_text"]}) > 1  # the prompts lead to different continuations


def test_generator_sampling_does_not_depend_on_the_batch(llama_dir):
    prompts = texts(5, 4, 2, 6)
    g = Generator(llama_dir, max_new_tokens=5, do_sample=True, temperature=1.5, seed=7)
    whole = g({"prompt": np.array(prompts, dtype=object)})["generated_text"]
    parts = [g({"prompt": np.array([p], dtype=object)})["generated_text"][0] for p in reversed(prompts)][::-1]
    assert list(whole) == parts
    other = Generator(llama_dir, max_new_tokens=5, do_sample=True, temperature=1.5, seed=8)
    assert list(other({"prompt": np.array(prompts, dtype=object)})["generated_text"]) != list(whole)


def test_bad_rows_get_an_error_not_an_exception(bert_dir, llama_dir):
    rows = np.array(["w3 w4", "", "   ", None, 5, "w9"], dtype=object)
    got = Embedder(bert_dir)({"text": rows})
    bad = [1, 2, 3, 4]
    assert [e is None for e in got["error"]] == [True, False, False, False, False, True]
    assert "empty" in got["error"][1] and "str" in got["error"][3] and "int" in got["error"][4]
    assert np.isnan(got["embedding"][bad]).all() and np.isfinite(got["embedding"][[0, 5]]).all()
    np.testing.assert_allclose(got["embedding"][[0, 5]], torch_embeddings(bert_dir, ["w3 w4", "w9"]), atol=2e-5)
    gen = Generator(llama_dir, max_new_tokens=3)({"prompt": rows})
    assert [t is None for t in gen["generated_text"]] == [False, True, True, True, True, False]
    assert [e is None for e in gen["error"]] == [True, False, False, False, False, True]


def test_bad_arguments_name_the_argument(bert_dir, tmp_path):
    with pytest.raises(ValueError, match="model_dir"):
        Embedder(str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="model_dir"):
        Embedder(3)
    with pytest.raises(ValueError, match="pooling"):
        Embedder(bert_dir, pooling="max")
    with pytest.raises(ValueError, match="threads"):
        Embedder(bert_dir, threads=0)
    with pytest.raises(ValueError, match="text_column"):
        Embedder(bert_dir)({"sentence": np.array(["w3"], dtype=object)})
    with pytest.raises(ValueError, match="model_dir.*generate"):
        Generator(bert_dir)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Generator(bert_dir, max_new_tokens=-1)


def test_quantize_is_forwarded_only_where_from_pretrained_takes_it(bert_dir):
    import inspect

    from attnkit.models import BertModel
    base = Embedder(bert_dir, quantize=None)({"text": np.array(["w5 w6 w7"], dtype=object)})["embedding"]
    if "quantize" not in inspect.signature(BertModel.from_pretrained).parameters:
        with pytest.raises(ValueError, match="quantize"):
            Embedder(bert_dir, quantize="int8")
    else:  # quantization has landed: the quantized model's embedding is close to the full one
        q = Embedder(bert_dir, quantize="int8")({"text": np.array(["w5 w6 w7"], dtype=object)})["embedding"]
        assert np.abs(q - base).max() < 0.05


def test_worker_cpus_outside_ray():
    assert worker_cpus() is None


# ---------------------------------------------------------------- a local cluster of two nodes
@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 << 20})
    c.add_node(num_cpus=1, object_store_memory=80 << 20)
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    c.wait_for_nodes()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    import sys
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
    yield c
    ray.shutdown()
    c.shutdown()


def dataset(rows):
    return ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(rows)], override_num_blocks=8)


def test_cluster_has_two_nodes(cluster):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2


def test_embedder_on_two_workers_equals_one_process(cluster, bert_dir):
    rows = texts(48, 5)
    out = dataset(rows).map_batches(Embedder, fn_constructor_args=(bert_dir,), batch_size=5, concurrency=2,
                                    num_cpus=1).take_all()
    assert [r["id"] for r in out] == list(range(48)) and [r["text"] for r in out] == rows
    local = Embedder(bert_dir)({"text": np.array(rows, dtype=object)})["embedding"]
    np.testing.assert_allclose(np.stack([r["embedding"] for r in out]), local, atol=1e-5)
    assert all(r["error"] is None for r in out)


class ThreadsProbe(Embedder):
    """An Embedder that also records attnkit's threads and the worker's process id per row."""

    def __call__(self, batch):
        import attnkit
        out = super().__call__(batch)
        out["threads"] = np.full(len(out["id"]), attnkit.get_num_threads())
        out["pid"] = np.full(len(out["id"]), os.getpid())
        return out


def test_workers_take_their_threads_from_ray(cluster, bert_dir):
    out = dataset(texts(16, 6)).map_batches(ThreadsProbe, fn_constructor_args=(bert_dir,), batch_size=4,
                                            concurrency=2, num_cpus=1).take_all()
    assert {r["threads"] for r in out} == {1}   # num_cpus=1: one attnkit thread per worker (the default is 2)
    assert 1 <= len({r["pid"] for r in out}) <= 2


class DiesOnce(Embedder):
    """Kills its own worker process the first time it meets row ``victim`` (a marker file says it did)."""

    def __init__(self, model_dir, marker, victim, **kw):
        super().__init__(model_dir, **kw)
        self.marker, self.victim = marker, victim

    def __call__(self, batch):
        if self.victim in batch["id"].tolist() and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)  # the actor's process dies mid-run, its batch unanswered
        return super().__call__(batch)


def test_killed_worker_is_replaced_and_no_row_is_lost_or_repeated(cluster, bert_dir, tmp_path):
    rows = texts(40, 7)
    marker = str(tmp_path / "died")
    out = dataset(rows).map_batches(DiesOnce, fn_constructor_args=(bert_dir, marker, 23), batch_size=4,
                                    concurrency=2, num_cpus=1).take_all()  # Ray Data's default: restart, retry
    assert os.path.exists(marker)  # a worker did die
    assert [r["id"] for r in out] == list(range(40))
    local = Embedder(bert_dir)({"text": np.array(rows, dtype=object)})["embedding"]
    np.testing.assert_allclose(np.stack([r["embedding"] for r in out]), local, atol=1e-5)


def test_bad_rows_on_the_cluster(cluster, bert_dir):
    rows = ["w3 w4", "", "w5", "  ", "w6 w7 w8", None, 5]
    out = dataset(rows).map_batches(Embedder, fn_constructor_args=(bert_dir,), batch_size=2, concurrency=2,
                                    num_cpus=1).take_all()
    assert [r["id"] for r in out] == list(range(7))
    assert [r["error"] is None for r in out] == [True, False, True, False, True, False, False]
    assert "empty" in out[1]["error"] and "NoneType" in out[5]["error"] and "int" in out[6]["error"]
    assert np.isnan(out[1]["embedding"]).all() and np.isfinite(out[4]["embedding"]).all()


def test_generator_on_two_workers_equals_one_process(cluster, llama_dir):
    prompts = texts(12, 8, 1, 8)
    ds = ray.data.from_items([{"id": i, "prompt": p} for i, p in enumerate(prompts)], override_num_blocks=4)
    out = ds.map_batches(Generator, fn_constructor_args=(llama_dir,), fn_constructor_kwargs={"max_new_tokens": 4},
                         batch_size=3, concurrency=2, num_cpus=1).take_all()
    assert [r["id"] for r in out] == list(range(12))
    assert [r["generated_text"] for r in out] == torch_continuations(llama_dir, prompts, 4)


def test_embedder_on_a_decoder_pools_its_last_hidden_states(llama_dir):
    rows = texts(4, 9)
    got = Embedder(llama_dir)({"text": np.array(rows, dtype=object)})["embedding"]
    model = transformers.LlamaForCausalLM.from_pretrained(llama_dir).eval()
    with torch.no_grad():
        ref = [torch.nn.functional.normalize(
            model(torch.tensor([ids_of(t)]), output_hidden_states=True).hidden_states[-1][0].mean(0), dim=0).numpy()
            for t in rows]
    np.testing.assert_allclose(got, np.stack(ref), atol=2e-5)
