"""CI check: .ci/lowest.txt pins exactly the lower bounds of pyproject.toml's runtime dependencies.

    python .ci/lowest_bounds.py                       the two files agree
    python .ci/lowest_bounds.py "numpy==X ml_dtypes==Y"  ... and these installed versions are those pins
"""
import re
import sys
import tomllib
from pathlib import Path

root = Path(__file__).resolve().parents[1]


def normal(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def lower_bounds():
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", dep.replace(" ", ""))
        if not m:
            sys.exit(f"pyproject.toml: dependency {dep!r} has no plain lower bound (name>=version) to test in CI")
        out[normal(m.group(1))] = m.group(2)
    return out


def pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[normal(name)] = version
    return out


bounds = lower_bounds()
lowest = pins((root / ".ci" / "lowest.txt").read_text().splitlines())
if bounds != lowest:
    sys.exit(f"pyproject.toml's lower bounds {bounds} differ from .ci/lowest.txt's pins {lowest}")
if len(sys.argv) > 1:
    installed = pins(sys.argv[1].split())
    if installed != lowest:
        sys.exit(f"installed {installed}, expected the lowest allowed {lowest}")
print(f"lowest supported: {lowest}")
