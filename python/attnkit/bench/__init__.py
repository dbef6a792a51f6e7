"""Benchmarks for attnkit: ``python -m attnkit.bench [--quick] [--suite ...] [--threads N] [--json PATH] [--plot PATH]``.

Suites (``attnkit.bench.suites``): attention (self, causal, cross), decode (one query over a KV cache),
linear, memory (peak RSS in a child process) and model (``attnkit.bench.models.run_model_suite``).
Contenders: attnkit, the NumPy oracle (``attnkit.reference``) and PyTorch when importable, all with the
same number of threads. See bench/README.md in the source tree.
"""
