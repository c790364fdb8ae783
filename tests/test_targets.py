"""Target profiles and recipes are data: every shipped file loads, unknown keys are refused,
aliases resolve, and the Jetson host CPU is Orin's (not the carmel core TVM's tag sets)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_slim import targets as T
from edge_slim.errors import BadInputError, ModelError

REQUIRED = {"x86-64", "x86-64-avx512", "arm64", "rpi4", "rpi5", "jetson-orin-nano", "jetson-orin-nx",
            "jetson-agx-orin", "cuda"}


def test_shipped_targets_and_recipes_load():
    targets, recipes = T.load_targets(), T.load_recipes()
    assert REQUIRED <= set(targets)
    for t in targets.values():
        assert t.recipe in recipes, f"{t.name} names a recipe that does not exist"
        assert "native" not in json.dumps(t.tvm_target()), f"{t.name} bakes the build host's CPU in"
        assert t.tvm.get("mcpu") or t.kind == "cuda", f"{t.name}: an llvm target needs mcpu (else SSE2 only)"


@pytest.mark.parametrize("alias,name", [("jetson", "jetson-orin-nano"), ("x86", "x86-64"), ("rpi5", "rpi5"),
                                        ("aarch64", "arm64"), ("x86-64-v4", "x86-64-avx512")])
def test_aliases(alias, name):
    assert T.get_target(alias).name == name


def test_unknown_target_lists_choices():
    with pytest.raises(BadInputError, match="jetson-orin-nano"):
        T.get_target("no-such-board")


@pytest.mark.parametrize("name", ["jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin"])
def test_jetson_host_is_orin_not_carmel(name):
    t = T.get_target(name).tvm_target()
    assert t["kind"] == "cuda" and t["arch"] == "sm_87"
    assert t["host"]["mcpu"] == "cortex-a78" and t["host"]["mtriple"] == "aarch64-linux-gnu"


def test_x86_variants_are_separate_isas():
    base, wide = T.get_target("x86-64"), T.get_target("x86-64-avx512")
    assert base.vector_bits == 256 and "avx512f" not in base.cpu_flags
    assert wide.vector_bits == 512 and "avx512f" in wide.cpu_flags


def test_cuda_arch_is_an_option():
    assert T.get_target("cuda").tvm_target(cuda_arch="sm_90")["arch"] == "sm_90"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


def test_unknown_key_is_rejected(tmp_path):
    good = (T.data_dir("targets") / "rpi4.toml").read_text()
    with pytest.raises(ModelError, match="unknown key.*cpu_typo"):
        T.load_target_file(_write(tmp_path, "rpi4", 'cpu_typo = "cortex-a72"\n' + good))
    with pytest.raises(ModelError, match=r"unknown key.*mcpux in \[tvm\]"):
        T.load_target_file(_write(tmp_path, "rpi4", good + '\nmcpux = "cortex-a72"\n'))


def test_wrong_type_and_missing_key_are_rejected(tmp_path):
    src = (T.data_dir("targets") / "rpi4.toml").read_text().replace("cores = 4", 'cores = "4"')
    with pytest.raises(ModelError, match="cores must be a int"):
        T.load_target_file(_write(tmp_path, "rpi4", src))
    src = "\n".join(line for line in (T.data_dir("compile") / "cpu-rules.toml").read_text().splitlines()
                    if not line.startswith("schedule"))
    with pytest.raises(ModelError, match="missing required key 'schedule'"):
        T.load_recipe_file(_write(tmp_path, "cpu-rules", src))


def test_a_new_device_is_a_new_file(tmp_path, monkeypatch):
    for kind in ("targets", "compile"):
        (tmp_path / kind).mkdir()
        for f in T.data_dir(kind).glob("*.toml"):
            (tmp_path / kind / f.name).write_text(f.read_text())
    src = (T.data_dir("targets") / "rpi5.toml").read_text()
    src = src.replace('name = "rpi5"', 'name = "my-board"').replace(
        'aliases = ["raspberry-pi-5", "cortex-a76"]', 'aliases = ["mine"]')
    _write(tmp_path / "targets", "my-board", src)
    monkeypatch.setenv(T.ENV_DIR, str(tmp_path))
    assert T.get_target("mine").name == "my-board"
    _write(tmp_path / "targets", "dup", src.replace('name = "my-board"', 'name = "dup"'))
    with pytest.raises(ModelError, match="already used"):
        T.load_targets()


def test_toolchain_status_never_raises():
    for t in T.load_targets().values():
        st = T.toolchain_status(t)
        assert isinstance(st["ready"], bool)
        assert st["ready"] == (not st["missing"])
        for line in st["missing"]:
            assert "install" in line


def test_targets_cli_json_without_tvm_import():
    code = ("import sys, json; from click.testing import CliRunner; from edge_slim.cli.main import cli; "
            "r = CliRunner().invoke(cli, ['targets', '--json']); assert r.exit_code == 0, r.output; "
            "d = json.loads(r.output); assert any(t['name'] == 'jetson-orin-nano' for t in d['targets']); "
            "assert 'tvm' not in sys.modules, 'targets imported tvm'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_cpu_flags_drop_what_cpuid_denies(monkeypatch, tmp_path):
    """An emulator passes the host's /proc/cpuinfo through: a flag CPUID denies is not the CPU's."""
    monkeypatch.setattr(T, "_cpuid", lambda: {"AVX2": True, "AVX512F": False, "AVX512VNNI": False})
    real = T.Path
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    monkeypatch.setattr(T, "Path", lambda p: info if p == "/proc/cpuinfo" else real(p))
    assert T.cpu_flags() == {"fpu", "sse2", "avx2"}
