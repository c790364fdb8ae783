"""What machine a measurement ran on: lscpu's identity of the CPU and its vector flags.

Latency ratios (int8 vs fp32, one backend vs another) differ between CPUs, so every benchmark result
carries this; a VM's "2 CPUs" may be two SMT siblings, which the threads-per-core field shows.
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path


def cpu_info() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {"model_name": platform.processor() or platform.machine()}
    kv = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}
    flags = kv.get("Flags", "").split()
    return {"model_name": kv.get("Model name", platform.processor() or platform.machine()),
            "family": kv.get("CPU family", ""), "model": kv.get("Model", ""), "cpus": kv.get("CPU(s)", ""),
            "threads_per_core": kv.get("Thread(s) per core", ""), "hypervisor": kv.get("Hypervisor vendor", ""),
            "simd_flags": [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "asimd", "sve", "neon"))
                           or "vnni" in f or f in ("fphp", "asimddp", "i8mm", "bf16")]}


def describe(cpu: dict) -> str:
    """One line: model name, family/model, CPU count, threads per core, hypervisor, vector flags."""
    ident = ", ".join(x for x in (f"family {cpu['family']} model {cpu['model']}" if cpu.get("family") else "",
                                  f"{cpu['cpus']} CPUs" if cpu.get("cpus") else "",
                                  f"{cpu['threads_per_core']} thread/core" if cpu.get("threads_per_core") else "",
                                  f"{cpu['hypervisor']} VM" if cpu.get("hypervisor") else "") if x)
    return f"{cpu.get('model_name')} ({ident}); flags: {' '.join(cpu.get('simd_flags', [])) or '-'}"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@functools.lru_cache(maxsize=None)
def physical_cores() -> int:
    """Cores among the usable CPUs, counting SMT siblings once (Linux sysfs topology; else every CPU).

    The default thread count for the backends: what ONNX Runtime picks by itself, and what TVM should get.
    """
    groups = set()
    for c in usable_cpus():
        try:
            groups.add(Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            groups.add(str(c))
    return max(1, len(groups))
