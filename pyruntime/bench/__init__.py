"""Benchmarks: ``python -m pyruntime.bench`` (see ``__main__``) and the
sample kernels they compile. Importing this package imports nothing heavy."""
