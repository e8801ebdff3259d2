"""Machine facts: the one line saying where a run's timings come from (metrics.json, results
tables), and a per-step cost of the CUDA probe removed on machines without NVML."""

from __future__ import annotations

import ctypes
import os
import platform


def usable_cpus() -> int:
    """CPUs this process may use: SLURM's allocation, else the affinity mask, else all.

    ``os.cpu_count()`` counts the whole node, which on a cluster is shared with other jobs.
    """
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_bf16_units() -> str | None:
    """The CPU's bf16 units by name (``AMX`` or ``AVX512-BF16``), or None (AVX2 and older:
    bf16 there is emulated, slower than float32)."""
    from seqmnist.core.internals import cpu_bf16_capabilities

    amx, avx512_bf16 = cpu_bf16_capabilities()
    if amx:
        return "AMX"
    if avx512_bf16:
        return "AVX512-BF16"
    return None


def describe() -> str:
    """e.g. ``Linux x86_64, 2 CPUs, 2 torch threads, no GPU, torch 2.14.1``."""
    import torch  # here, so the results table can be built without importing torch up front

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.system()} {platform.machine()}, {usable_cpus()} CPUs, "
        f"{torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"
    )


def skip_nvml_probe_without_nvml() -> bool:
    """Switch off the NVML-based CUDA check where NVML cannot be loaded; True if switched off.

    Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (so a CUDA check does not
    initialise CUDA before a fork), and ``torch.optim.Adam.step`` checks for CUDA on every
    step. Without ``libnvidia-ml`` (every CPU-only machine) each check then tries to
    ``dlopen`` it, fails, and falls back to the CUDA runtime's count anyway: the answer is
    the same, but the failed ``dlopen`` costs ~0.2 ms per optimizer step (measured here, 2
    cores, torch 2.14). Where NVML loads, nothing changes.
    """
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1":
        return False
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
        return True
    return False
