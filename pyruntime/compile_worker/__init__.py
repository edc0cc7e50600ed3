"""``python -m pyruntime.compile_worker``: the sidecar's entry point."""
