"""The README's ```python blocks run, in order, in one namespace (```py blocks are illustrations
that need files or PyTorch)."""
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # the quickstart's outputs are what the text says they are
    assert namespace["out"].dtype == np.float32
    assert namespace["y"].shape == namespace["x"].shape
    assert namespace["ids"].shape[0] == 1
