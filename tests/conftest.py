"""Shared fixtures: every backend test runs on the C module and the twin."""

from __future__ import annotations

import os
import shutil

import pytest

from pyruntime import core as native

try:
    from hypothesis import HealthCheck, settings

    # PYRUNTIME_HYPOTHESIS_PROFILE picks one: ci (default), dev (fast), thorough.
    # ci is derandomized so a red CI is reproducible and never a coin toss;
    # thorough draws fresh random examples each run (run it when changing a decoder).
    settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", max_examples=30, deadline=None)
    settings.register_profile("thorough", max_examples=3000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("PYRUNTIME_HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass

BACKENDS = native.backends()


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def backend(request):
    """Each backend that loads here (C first, then the Python twin)."""
    return request.param


@pytest.fixture
def c_backend():
    if BACKENDS[0].name != "c":
        pytest.skip("the C module is not built")
    return BACKENDS[0]


def _has_cuda() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return os.path.exists("/dev/nvidia0")


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
