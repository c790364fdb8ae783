"""What machine a measurement ran on: lscpu's identity of the CPU and its vector flags.

Latency ratios (int8 vs fp32, one backend vs another) differ between CPUs, so every benchmark result
carries this; a VM's "2 CPUs" may be two SMT siblings, which the threads-per-core field shows.
"""
from __future__ import annotations

import platform
import subprocess


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
