"""Target profiles (targets/*.toml) and compile recipes (compile/*.toml): data, read with tomllib.

A target says what a device is (TVM target dict with its host set explicitly, host triple,
cross compiler and the package that provides it, CUDA arch, vector ISA facts for the CPU rules);
a recipe says how to compile for it (schedule rules, FastMath, prepacking, tuning budget).
Unknown keys are rejected, so a typo in a profile fails loudly. Runtime-safe: no tvm import.

A new device is a new file in targets/; see docs/targets.md.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import platform
import shutil

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInputError, ModelError

ROOT = Path(__file__).resolve().parent.parent
ENV_DIR = "EDGE_SLIM_DATA_DIR"   # a directory holding targets/ and compile/ (overrides the repo's)

# key -> (type, required). Types are checked exactly (bool is not an int here).
TARGET_KEYS: dict[str, tuple[type | tuple, bool]] = {
    "name": (str, True), "aliases": (list, False), "description": (str, True),
    "kind": (str, True), "recipe": (str, True), "cores": (int, False),
    "host_triple": (str, True), "cc": (str, True), "cc_package": (str, True),
    "vector_bits": (int, False), "vector_registers": (int, False), "cpu_flags": (list, False),
    "cuda_arch": (str, False), "nvcc_package": (str, False),
    "tvm": (dict, True), "tvm_host": (dict, False), "int8_kernel": (str, False),
}
# a variant set (targets/x86-64-multi.toml): several targets' artifacts in one, the runtime loads the best the
# host CPU can run; [variants] maps a precision to target names, best first, ending with the baseline
VARIANT_SET_KEYS: dict[str, tuple[type | tuple, bool]] = {
    "name": (str, True), "aliases": (list, False), "description": (str, True), "variants": (dict, True),
}
RECIPE_KEYS: dict[str, tuple[type | tuple, bool]] = {
    "name": (str, True), "description": (str, True), "precision": (str, True),
    "schedule": (str, True), "fast_math": (bool, True), "prepack_weights": (bool, True),
    "tune_trials": (int, True),
}
# keys allowed in the [tvm] / [tvm_host] tables (a typo there would only fail deep inside TVM)
TVM_KEYS = {"kind", "mtriple", "mcpu", "mattr", "mabi", "mfloat-abi", "num-cores", "arch", "max_num_threads",
            "max_threads_per_block", "max_shared_memory_per_block", "thread_warp_size", "registers_per_block",
            "libs", "opt-level", "fast-math"}
KINDS = ("cpu", "cuda")
# the integer matmul kernels of aot/lower/int8_kernels.py a profile may name (kept here: runtime code validates
# profiles and never imports ahead-of-time code)
INT8_KERNELS = ("x86-avx2-madd", "x86-avx512-madd", "x86-vnni", "arm-sdot", "arm-neon-widen")
SCHEDULES = ("cpu-rules", "dlight-gpu", "none")
PRECISIONS = ("fp32", "fp16", "int8")
# host triple -> (ELF e_machine, name); the runtime compares it with the host's
ELF_MACHINES = {"x86_64-linux-gnu": (62, "x86-64"), "aarch64-linux-gnu": (183, "aarch64")}
NVCC_CANDIDATES = ("nvcc", "/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    precision: str
    schedule: str
    fast_math: bool
    prepack_weights: bool
    tune_trials: int
    path: Path | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in RECIPE_KEYS}


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    kind: str
    recipe: str
    host_triple: str
    cc: str
    cc_package: str
    tvm: dict
    aliases: tuple = ()
    cores: int = 0
    vector_bits: int = 128
    vector_registers: int = 16
    cpu_flags: tuple = ()
    cuda_arch: str | None = None
    nvcc_package: str | None = None
    tvm_host: dict | None = None
    int8_kernel: str | None = None      # aot/lower/int8_kernels.py: the integer matmul kernel of int8 artifacts
    variants: dict | None = None        # a variant set: precision -> target names, best first (the rest is the
    #                                     baseline's, the last name: what building for it and running it needs)
    path: Path | None = field(default=None, compare=False)

    def variant_names(self, precision: str) -> list[str]:
        """The targets a variant-set artifact of `precision` holds, best first (baseline last)."""
        names = (self.variants or {}).get(precision)
        if not names:
            raise BadInputError(f"target {self.name} has no variants for {precision} (it has: "
                                f"{', '.join(self.variants or {}) or 'none'})")
        return list(names)

    @property
    def elf_machine(self) -> tuple[int, str]:
        return ELF_MACHINES[self.host_triple]

    def tvm_target(self, cuda_arch: str | None = None, cores: int | None = None) -> dict:
        """The dict for tvm.target.Target, host set explicitly (never a tag's default host)."""
        n = cores if cores is not None else (self.cores or os.cpu_count() or 1)
        if self.kind == "cpu":
            return {**self.tvm, "num-cores": n}
        host = {**(self.tvm_host or {}), "num-cores": n}
        return {**self.tvm, "arch": cuda_arch or self.cuda_arch, "host": host}

    def artifact_info(self) -> dict:
        """What a compiled artifact's manifest records of its target (`target`): what the runtime and the C API
        check against the host before loading it (docs/bundle.md)."""
        return {"name": self.name, "kind": self.kind, "host_triple": self.host_triple,
                "elf_machine": self.elf_machine[1], "cpu_flags": list(self.cpu_flags)}

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in TARGET_KEYS if getattr(self, k, None) is not None}
        d["aliases"], d["cpu_flags"] = list(self.aliases), list(self.cpu_flags)
        if self.variants:
            d["variants"] = {k: list(v) for k, v in self.variants.items()}
        return d


def data_dir(kind: str) -> Path:
    """The directory of target profiles ('targets') or recipes ('compile'): $EDGE_SLIM_DATA_DIR,
    else the source tree's top-level folder, else the copy an installed wheel carries."""
    base = os.environ.get(ENV_DIR)
    if base:
        return Path(base) / kind
    if (ROOT / kind).is_dir():
        return ROOT / kind
    return Path(__file__).resolve().parent / "data" / kind


def _check_keys(d: dict, schema: dict, where: Path) -> None:
    unknown = sorted(set(d) - set(schema))
    if unknown:
        raise ModelError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(schema)}")
    for k, (typ, required) in schema.items():
        if k not in d:
            if required:
                raise ModelError(f"{where}: missing required key {k!r}")
            continue
        v = d[k]
        if type(v) is not typ:
            raise ModelError(f"{where}: {k} must be a {typ.__name__}, not {type(v).__name__}")


def _check_choices(d: dict, choices: dict, where: Path) -> None:
    for k, allowed in choices.items():
        if d[k] not in allowed:
            raise ModelError(f"{where}: {k} must be one of {', '.join(allowed)}")


def _load_toml(path: Path) -> dict:
    if tomllib is None:
        raise ModelError("reading target profiles needs Python 3.11+ (tomllib)")
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ModelError(f"{path}: not a readable TOML file ({e})") from None


def load_recipe_file(path: Path) -> Recipe:
    d = _load_toml(path)
    _check_keys(d, RECIPE_KEYS, path)
    _check_choices(d, {"schedule": SCHEDULES, "precision": PRECISIONS}, path)
    if d["tune_trials"] < 0:
        raise ModelError(f"{path}: tune_trials must be >= 0")
    return Recipe(**d, path=path)


def load_target_file(path: Path, d: dict | None = None) -> Target:
    d = _load_toml(path) if d is None else d
    _check_keys(d, TARGET_KEYS, path)
    _check_choices(d, {"kind": KINDS, "host_triple": ELF_MACHINES}, path)
    for table in ("tvm", "tvm_host"):
        extra = sorted(set(d.get(table, {})) - TVM_KEYS)
        if extra:
            raise ModelError(f"{path}: unknown key(s) {', '.join(extra)} in [{table}]; allowed: {', '.join(sorted(TVM_KEYS))}")
    if "int8_kernel" in d and d["int8_kernel"] not in INT8_KERNELS:
        raise ModelError(f"{path}: int8_kernel must be one of {', '.join(INT8_KERNELS)}")
    if "kind" not in d["tvm"]:
        raise ModelError(f"{path}: [tvm] needs a kind")
    if d["kind"] == "cuda":
        if not d.get("cuda_arch") or not d.get("tvm_host"):
            raise ModelError(f"{path}: a cuda target needs cuda_arch and a [tvm_host] table")
        if d["tvm_host"].get("mtriple") != d["host_triple"]:
            raise ModelError(f"{path}: [tvm_host] mtriple must equal host_triple")
    elif d["tvm"].get("mtriple") != d["host_triple"]:
        raise ModelError(f"{path}: [tvm] mtriple must equal host_triple")
    if path.stem != d["name"]:
        raise ModelError(f"{path}: the file must be named after the target ({d['name']}.toml)")
    d["aliases"] = tuple(d.get("aliases", ()))
    d["cpu_flags"] = tuple(d.get("cpu_flags", ()))
    return Target(**d, path=path)


def load_variant_set(path: Path, d: dict, targets: dict[str, Target]) -> Target:
    """A variant set: its baseline's profile (the last name of each list, the same for every precision) under
    the set's name, with `variants`; every name must be a real (non-set) target of the same host."""
    _check_keys(d, VARIANT_SET_KEYS, path)
    v = d["variants"]
    bad = sorted(set(v) - set(PRECISIONS))
    if bad or not v or not all(isinstance(n, list) and n and all(isinstance(x, str) for x in n) for n in v.values()):
        raise ModelError(f"{path}: [variants] maps precisions ({', '.join(PRECISIONS)}) to non-empty lists of "
                         "target names" + (f"; unknown: {', '.join(bad)}" if bad else ""))
    for n in {x for names in v.values() for x in names}:
        if n not in targets:
            raise ModelError(f"{path}: variant {n!r} is not a target profile (variant sets cannot nest)")
    base = {names[-1] for names in v.values()}
    if len(base) != 1:
        raise ModelError(f"{path}: every [variants] list must end with the same baseline target, not {sorted(base)}")
    b = targets[base.pop()]
    if {targets[x].host_triple for names in v.values() for x in names} != {b.host_triple} or b.kind != "cpu":
        raise ModelError(f"{path}: variants must be CPU targets of one host triple")
    if path.stem != d["name"]:
        raise ModelError(f"{path}: the file must be named after the target ({d['name']}.toml)")
    return dataclasses.replace(b, name=d["name"], aliases=tuple(d.get("aliases", ())), description=d["description"],
                               variants={k: tuple(x) for k, x in v.items()}, path=path)


def load_targets(directory: Path | None = None) -> dict[str, Target]:
    """Every target profile by name (variant sets after the targets they name); names and aliases must be
    unique."""
    directory = directory or data_dir("targets")
    out: dict[str, Target] = {}
    sets = []
    for f in sorted(directory.glob("*.toml")):
        d = _load_toml(f)
        if "variants" in d:
            sets.append((f, d))
        else:
            t = load_target_file(f, d)
            out[t.name] = t
    for f, d in sets:
        t = load_variant_set(f, d, out)
        out[t.name] = t
    seen: dict[str, str] = {}
    for t in out.values():
        for key in (t.name, *t.aliases):
            if key in seen:
                raise ModelError(f"{t.path}: {key!r} is already used by target {seen[key]!r}")
            seen[key] = t.name
    if not out:
        raise ModelError(f"no target profiles found in {directory}")
    return out


def load_recipes(directory: Path | None = None) -> dict[str, Recipe]:
    directory = directory or data_dir("compile")
    out = {}
    for f in sorted(directory.glob("*.toml")):
        r = load_recipe_file(f)
        if r.name in out or r.name != f.stem:
            raise ModelError(f"{f}: recipe name must be unique and match the file name")
        out[r.name] = r
    return out


def get_target(name: str, targets: dict[str, Target] | None = None) -> Target:
    targets = targets or load_targets()
    for t in targets.values():
        if name == t.name or name in t.aliases:
            return t
    names = ", ".join(f"{t.name}" + (f" ({', '.join(t.aliases)})" if t.aliases else "") for t in targets.values())
    raise BadInputError(f"unknown target {name!r}; choose from: {names}")


def get_recipe(name: str, recipes: dict[str, Recipe] | None = None) -> Recipe:
    recipes = recipes or load_recipes()
    if name not in recipes:
        raise BadInputError(f"unknown recipe {name!r}; choose from {', '.join(recipes)}")
    return recipes[name]


# ---------------------------------------------------------------- toolchains (never raise)
def find_nvcc() -> str | None:
    env = os.environ.get("NVCC")
    if env and shutil.which(env):
        return shutil.which(env)
    for c in NVCC_CANDIDATES:
        p = shutil.which(c)
        if p:
            return p
    return None


def toolchain_status(t: Target) -> dict:
    """What building for `t` needs on this machine, what is found, and what to install."""
    missing, found = [], {}
    cc = shutil.which(t.cc)
    found["cc"] = cc
    if not cc:
        missing.append(f"{t.cc}: install {t.cc_package}")
    elif t.host_triple == "aarch64-linux-gnu" and not Path("/usr/aarch64-linux-gnu/include/stdio.h").exists():
        missing.append("aarch64 C library headers: install libc6-dev-arm64-cross")
    if t.kind == "cuda":
        nvcc = find_nvcc()
        found["nvcc"] = nvcc
        if not nvcc:
            missing.append(f"nvcc: install {t.nvcc_package}")
        if not shutil.which("gcc"):
            missing.append("gcc (host): builds the stub libcuda used at build time: apt-get install gcc")
    try:
        import importlib.util
        has_tvm = importlib.util.find_spec("tvm") is not None
    except (ImportError, ValueError):
        has_tvm = False
    if not has_tvm:
        missing.append("the TVM compiler: pip install 'edge-slim[tvm]' (apache-tvm)")
    return {"ready": not missing, "found": found, "missing": missing}


def host_triple() -> str | None:
    m = platform.machine().lower()
    return {"x86_64": "x86_64-linux-gnu", "amd64": "x86_64-linux-gnu",
            "aarch64": "aarch64-linux-gnu", "arm64": "aarch64-linux-gnu"}.get(m)


def cpu_flags() -> set[str]:
    """The host CPU's feature flags from /proc/cpuinfo (empty if unreadable), less the x86 vector flags that
    CPUID itself denies: an emulator (qemu-x86_64 -cpu Haswell) passes the host's /proc/cpuinfo through,
    so a test or a target check trusting it alone would run AVX-512 code there and die of SIGILL."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key = line.split(":")[0].strip().lower()
        if key in ("flags", "features"):
            flags = set(line.split(":", 1)[1].split())
            denied = {f for f, name in CPUID_NAMES.items() if f in flags and _cpuid().get(name) is False}
            return flags - denied
    return set()


# /proc/cpuinfo flag -> NumPy's name for the same CPUID bit (numpy reads CPUID at import)
CPUID_NAMES = {"avx": "AVX", "avx2": "AVX2", "fma": "FMA3", "f16c": "F16C", "avx512f": "AVX512F",
               "avx512cd": "AVX512CD", "avx512bw": "AVX512BW", "avx512dq": "AVX512DQ", "avx512vl": "AVX512VL",
               "avx512ifma": "AVX512IFMA", "avx512vbmi": "AVX512VBMI", "avx512_vbmi2": "AVX512VBMI2",
               "avx512_vnni": "AVX512VNNI", "avx512_bitalg": "AVX512BITALG", "avx512_bf16": "AVX512BF16",
               "avx512_vpopcntdq": "AVX512VPOPCNTDQ", "avx512_fp16": "AVX512FP16"}


def _cpuid() -> dict[str, bool]:
    """NumPy's view of CPUID on x86 (empty elsewhere or where NumPy does not expose it)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    for mod in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            return dict(importlib.import_module(mod).__cpu_features__)
        except (ImportError, AttributeError):
            continue
    return {}


def describe() -> list[dict]:
    """One entry per target for `edge-slim targets`: profile, recipe, toolchain status."""
    out = []
    for t in load_targets().values():
        st = toolchain_status(t)
        out.append({"name": t.name, "aliases": list(t.aliases), "kind": t.kind, "description": t.description,
                    "host_triple": t.host_triple, "cuda_arch": t.cuda_arch, "recipe": t.recipe,
                    "tvm_target": t.tvm_target(cores=t.cores or 0), **st})
    return out
