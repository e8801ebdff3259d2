"""seqmnist.core.machine: the machine line and the NVML probe switch."""

from __future__ import annotations

import ctypes

import pytest
import torch

from seqmnist.core import machine


def test_describe_names_threads_and_torch() -> None:
    line = machine.describe()
    assert f"{torch.get_num_threads()} torch threads" in line
    assert f"torch {torch.__version__}" in line


def _no_nvml(name: str) -> None:
    raise OSError(f"{name}: cannot open shared object file")


def test_nvml_probe_is_switched_off_only_where_nvml_cannot_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(ctypes, "CDLL", _no_nvml)
    assert machine.skip_nvml_probe_without_nvml() is True
    assert machine.os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "0"
    if hasattr(torch._C, "_cuda_getDeviceCount"):  # a CUDA build of torch
        # Torch's answer is unchanged: without NVML it asked the CUDA runtime anyway.
        assert torch.cuda.is_available() == (torch._C._cuda_getDeviceCount() > 0)

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())  # NVML loads: leave it alone
    assert machine.skip_nvml_probe_without_nvml() is False
    assert machine.os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"

    monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK")  # not set: nothing to do
    assert machine.skip_nvml_probe_without_nvml() is False
    assert "PYTORCH_NVML_BASED_CUDA_CHECK" not in machine.os.environ
