"""Packaging (issue 19): one version everywhere, the metadata a package index shows, every ISA's kernels
in the installed module. .ci/wheel runs the whole suite against a wheel installed from the file alone."""
import importlib.metadata as md
import platform

import pytest

import attnkit
from attnkit import _core


def test_one_version_everywhere():
    v = md.version("attnkit")
    assert attnkit.__version__ == _core.__version__ == attnkit.get_config()["version"] == v
    assert v.count(".") >= 2 and all(p.isdigit() for p in v.split(".")[:3]), v


def test_metadata_is_complete():
    meta = md.metadata("attnkit")
    assert meta["Summary"] and len(meta["Summary"]) > 30
    assert meta["Requires-Python"] == ">=3.9"
    classifiers = meta.get_all("Classifier")
    assert "License :: OSI Approved :: MIT License" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in classifiers)
    extras = set(meta.get_all("Provides-Extra"))
    assert {"test", "ray", "docs", "bench"} <= extras
    assert any(r.startswith("ray") and "extra == \"ray\"" in r for r in meta.get_all("Requires-Dist"))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="attnkit builds for x86-64 only")
def test_every_isa_is_compiled_in():
    assert attnkit.get_config()["compiled_isas"][:3] == ["generic", "avx2", "avx512"]
    assert {"avx512_bf16", "amx_bf16"} <= set(attnkit.get_config()["compiled_isas"])
