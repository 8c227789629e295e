"""Test session set-up. ``import visctx`` comes first: it pins the CPU kernels (visctx.cpu) before any
test module imports numpy or torch, so the tests compute what the workflow computes on any CPU.
Tests marked ``gpu`` are skipped without a CUDA device (torch is imported only when one is collected)."""

import visctx  # noqa: F401  (first: the CPU-kernel pin)

import pytest


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_items:
        item.add_marker(skip)
