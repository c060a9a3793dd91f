"""lit_llm's tests. A package, so that tests and benchmarks import the shared helpers as ``tests.helpers`` (with the
repository root on the path: pytest's ``pythonpath``, or ``python -m``/a benchmark run from the root)."""
