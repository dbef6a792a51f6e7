"""The documentation (issue 19): every ```python block of each docs/ page runs, in order, in one namespace per
page (```py blocks are illustrations that need checkpoints, a cluster or PyTorch); every public name has a
docstring. The site itself is built by `mkdocs build --strict` in CI (a broken link or reference fails it)."""
import inspect
import pathlib
import re

import numpy as np
import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.glob("*.md")) if DOCS.is_dir() else []


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_the_docs_are_here():
    if not DOCS.is_dir():
        pytest.skip("no docs/ beside tests/ (a copy of the tests without the docs)")
    names = {p.name for p in PAGES}
    assert {"index.md", "kernels.md", "half-precision.md", "models.md", "generation.md", "quantization.md",
            "ray.md", "benchmark.md", "api.md"} <= names
    assert sum(len(python_blocks(p)) for p in PAGES) >= 10


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_page_python_blocks_run(page):
    namespace = {"__name__": f"docs_{page.stem}"}
    for block in python_blocks(page):
        exec(compile(block, str(page), "exec"), namespace)
    if page.name == "index.md":  # the quickstart's outputs are what the text says they are
        assert namespace["out"].dtype == np.float32 and namespace["out"].shape == (2, 8, 128, 64)
    if page.name == "kernels.md":
        assert namespace["y"].shape == namespace["x"].shape
    if page.name == "models.md":
        assert namespace["ids"].shape[0] == 1
    if page.name == "generation.md":
        assert namespace["greedy"].shape == (1, 9) and namespace["sampled"].shape == (2, 12)


def doctests_of(module):
    """The docstring examples of ``module`` and of every function and class it exports, wherever defined
    (attnkit.functional's live in its rooms, attnkit.nn's in its submodules), a class's with those of its
    attnkit base classes (BertModel.from_pretrained is Pretrained's)."""
    import doctest
    import importlib
    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder(exclude_empty=True)
    objects = [(module, mod)]
    for name in getattr(mod, "__all__", ()):
        obj = getattr(mod, name)
        if inspect.isfunction(obj):
            objects.append((f"{obj.__module__}.{obj.__qualname__}", obj))
        elif inspect.isclass(obj):
            objects += [(f"{k.__module__}.{k.__qualname__}", k) for k in obj.__mro__ if _is_ours(k)]
    found = {}
    for name, obj in objects:
        for t in finder.find(obj, name):
            if t.examples:
                found.setdefault((t.filename, t.lineno), t)
    return list(found.values())


def _is_ours(obj) -> bool:
    return (getattr(obj, "__module__", None) or "").startswith("attnkit")


@pytest.mark.parametrize("module", ["attnkit", "attnkit.functional", "attnkit.ray", "attnkit.nn", "attnkit.models",
                                    "attnkit.models.bert", "attnkit.models.gpt2", "attnkit.models.llama",
                                    "attnkit.models.seq2seq"])
def test_docstring_examples_run(module):
    import doctest
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in doctests_of(module):
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {module} failed (see the output above)"
    if module != "attnkit.ray":
        assert result.attempted >= 3


def public_objects():
    import attnkit
    import attnkit.models
    import attnkit.nn
    import attnkit.ray
    for mod in (attnkit, attnkit.nn, attnkit.models, attnkit.ray):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{mod.__name__}.{name}", obj


def test_every_public_name_has_a_docstring():
    missing = [name for name, obj in public_objects() if not (obj.__doc__ or "").strip()]
    assert not missing, f"no docstring: {missing}"


# The one docstring style (Google's, as mkdocstrings reads it): a summary; "Args:" naming every argument;
# "Returns:" (or "Yields:") where something comes back; "Raises:"; "Examples:" in doctest form (the plural: the
# site shows that section as code; a singular "Example:" would be markdown text). An argument or result without
# a type annotation gives its type in parentheses, "name (type): ...", or the strict docs build fails.
SECTION = re.compile(r"^\s*(Args|Returns|Yields|Raises|Example|Examples|Attributes|Note|Notes|Warns):\s*$", re.M)
# methods that are a model's or a layer's way in: each shows itself in an example
ENTRY_POINTS = {"__call__", "generate", "stream", "from_pretrained", "from_state_dict", "save_pretrained",
                "from_config", "from_dict"}


def sections(doc: str) -> dict:
    """{section name: its text} of a Google-style docstring ("" for the summary)."""
    parts = SECTION.split(inspect.cleandoc(doc or ""))
    out = {"": parts[0]}
    for name, text in zip(parts[1::2], parts[2::2]):
        out[name] = text
    return out


def arguments(fn) -> list:
    """The names a caller passes (self / cls left out)."""
    params = list(inspect.signature(fn).parameters.values())
    return [p.name for p in params if p.name not in ("self", "cls")]


def returns_a_value(fn) -> bool:
    """Whether fn's own body returns something other than None, or yields."""
    import ast
    import textwrap
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    stack = list(ast.iter_child_nodes(tree.body[0]))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            return True
        stack.extend(ast.iter_child_nodes(node))
    return False


def style_problems(name: str, doc: str, fn=None, *, example: bool, result: bool = True) -> list:
    """What the docstring ``doc`` of ``name`` lacks; fn: the callable whose arguments (and, with ``result``, whose
    result) it documents."""
    if not (doc or "").strip():
        return [f"{name}: no docstring"]
    got, problems = sections(doc), []
    signature = inspect.signature(fn) if fn is not None else None
    args = arguments(fn) if fn is not None else []
    if args:
        documented = got.get("Args", "")
        missing = [a for a in args if not re.search(rf"^\s*\**{re.escape(a)}\b", documented, re.M)]
        if missing:
            problems.append(f"{name}: Args does not name {missing}")
        untyped = [a for a in args if a not in missing and signature.parameters[a].annotation is inspect.Parameter.empty
                   and not re.search(rf"^\s*\**{re.escape(a)} \(.+\):", documented, re.M)]
        if untyped:
            problems.append(f"{name}: neither an annotation nor '(type)' in Args for {untyped}")
    if fn is not None and result and returns_a_value(fn):
        told = got.get("Returns", got.get("Yields"))
        if told is None:
            problems.append(f"{name}: no Returns (or Yields)")
        elif signature.return_annotation is inspect.Signature.empty and not re.match(r"\s*(\w+ )?\(.+\):", told):
            problems.append(f"{name}: neither a return annotation nor '(type):' in Returns")
    if example and "Examples" not in got:
        problems.append(f"{name}: no Examples")
    return problems


def nn_and_model_api():
    """(dotted name, docstring, callable or None, is a method or function, needs an example) for every public class
    and function of attnkit.nn and attnkit.models, and every public method and property of those classes
    (__call__ included), each once, under the attnkit class that defines it (BertModel.from_pretrained is
    Pretrained's)."""
    import attnkit.models
    import attnkit.nn
    seen = set()
    for mod in (attnkit.nn, attnkit.models):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                yield f"{mod.__name__}.{name}", obj.__doc__, obj, True, True
            if not inspect.isclass(obj):
                continue
            init = obj.__init__ if "__init__" in vars(obj) else None    # a subclass's are its base's
            yield f"{mod.__name__}.{name}", obj.__doc__ or "", init, False, True
            for klass in obj.__mro__:
                if not _is_ours(klass):
                    continue
                for attr, value in vars(klass).items():
                    key = f"{klass.__module__}.{klass.__qualname__}.{attr}"
                    if (attr.startswith("_") and attr != "__call__") or key in seen:
                        continue
                    seen.add(key)
                    if isinstance(value, property):
                        yield key, value.fget.__doc__, None, False, False
                        continue
                    fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
                    if inspect.isfunction(fn) and fn.__name__ == attr:       # not an alias (forward = __call__)
                        yield key, fn.__doc__, fn, True, attr in ENTRY_POINTS


def test_nn_and_models_document_every_argument_result_and_example():
    """Every public class of attnkit.nn and attnkit.models (its constructor's arguments in the class docstring),
    each public method (arguments, result) and property, in the one style; classes and entry points (__call__,
    generate, from_pretrained, from_state_dict, save_pretrained, from_config, ...) with an example."""
    problems = [p for name, doc, fn, result, example in nn_and_model_api()
                for p in style_problems(name, doc, fn, example=example, result=result)]
    assert not problems, "\n".join(problems)


def test_the_package_metadata_names_the_docs_site():
    """pyproject's [project.urls] and mkdocs.yml's site_url / repo_url are the same addresses."""
    tomllib = pytest.importorskip("tomllib")
    root = DOCS.parent
    if not (root / "pyproject.toml").is_file() or not (root / "mkdocs.yml").is_file():
        pytest.skip("no pyproject.toml / mkdocs.yml beside tests/")
    urls = tomllib.loads((root / "pyproject.toml").read_text())["project"]["urls"]
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(urls)
    mkdocs = dict(re.findall(r"^(site_url|repo_url):\s*(\S+)\s*$", (root / "mkdocs.yml").read_text(), re.M))
    assert mkdocs.get("site_url") == urls["Documentation"]
    assert mkdocs.get("repo_url") == urls["Source"]
    assert urls["Issues"].startswith(urls["Source"])
