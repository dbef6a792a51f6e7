"""The README's ```python blocks run, in order, in one namespace (```py blocks are illustrations
that need files or PyTorch). The README keeps the quickstart; the other examples live in docs/ (tests/test_docs.py)."""
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 1
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # the quickstart's outputs are what the text says they are
    assert namespace["out"].dtype == np.float32 and namespace["out"].shape == (2, 8, 128, 64)
