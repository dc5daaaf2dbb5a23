"""The environment switches that turn kernels off for A/B runs."""
from __future__ import annotations

import pytest

import autoglm_kernels as kernels


@pytest.fixture
def switches(monkeypatch):
    def read(**env):
        for name in ("AUTOGLM_KERNELS", "AUTOGLM_KERNELS_OFF"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        kernels._switched_on.cache_clear()
        return kernels._switched_on()
    yield read
    kernels._switched_on.cache_clear()


def test_all_on_by_default_some_or_none_off(switches):
    assert switches() == set(kernels.KERNELS)
    assert switches(AUTOGLM_KERNELS_OFF="gemv, attention") == set(kernels.KERNELS) - {"gemv", "attention"}
    assert switches(AUTOGLM_KERNELS="torch") == set()


def test_a_misspelt_kernel_is_named(switches):
    with pytest.raises(ValueError, match="names no kernel gemm; known: norm"):
        switches(AUTOGLM_KERNELS_OFF="gemm")
