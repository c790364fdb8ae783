"""Variant sets: one artifact holding the builds of several CPU targets, the best the host runs loaded at run time.

A single-ISA artifact must choose its vector width when it is compiled, while ONNX Runtime picks AVX-512 kernels
when the CPU has them: on a Zen 5 core the AVX2 (`x86-64`) build of SlimPajama-Tiny ran 1.5x ONNX Runtime's fp32,
the AVX-512 build 0.94x (BENCHMARKS.md). A variant set (targets/x86-64-multi.toml) compiles the model once per
target of its list for the source's precision, each into a sub-directory that is a complete compiled bundle, and
writes a manifest of format `variants` that lists them best first with their cpu_flags and checksums their
manifests. `edge_slim.runtime.bundle.open_bundle` (and the C API's es_open) load the first variant whose flags the
CPU has; EDGE_SLIM_VARIANT=TARGET forces one. Costs one build's size and compile time per variant.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ... import targets as T
from ...errors import CompileError
from ...runtime import bundle as B


def compile_variants(source, tgt: T.Target, out: Path | None, precision: str | None, progress=None,
                     **kwargs) -> dict:
    """Compile `source` for every target of the variant set `tgt` (baseline first: it settles the precision)
    into OUT/<target>/, then write OUT/manifest.json; -> the set's manifest plus its path."""
    from .pipeline import compile_model, default_output
    t0 = time.perf_counter()
    base = tgt.variant_names(precision or "fp32")[-1]
    out = Path(out) if out else default_output(Path(source) if source is not None else None, tgt, precision)
    with B.staging_dir(out) as tmp:
        def build(name: str) -> dict:
            tell = None if progress is None else (lambda ev: progress({**ev, "phase": f"{name}: {ev['phase']}"}))
            try:
                return compile_model(source, name, precision=precision, out=tmp / name, progress=tell, **kwargs)
            except CompileError as e:    # its traceback log is in the staging folder, which is about to go
                log = tmp / f"{name}.compile-error.log"
                if not log.is_file():
                    raise
                kept = out.parent / f"{out.name}.compile-error.log"
                shutil.copy2(log, kept)
                raise CompileError(str(e).replace(str(log), str(kept))) from e
        built = {base: build(base)}
        prec = built[base]["precision"]
        names = tgt.variant_names(prec)     # every list ends with the same baseline (targets.load_variant_set)
        for name in names[:-1]:
            built[name] = build(name)
        manifest = write_variant_set(tmp, built[base]["name"], prec, tgt.artifact_info(),
                                     [{"dir": n, "target": n, "cpu_flags": built[n]["target"]["cpu_flags"]}
                                      for n in names],
                                     {"seconds": round(time.perf_counter() - t0, 3),
                                      "variants": {n: built[n]["compile"]["seconds"] for n in names}})
    return {**manifest, "path": str(out)}


def write_variant_set(folder: Path, name: str, precision: str, target: dict, variants: list[dict],
                      compile_info: dict | None = None) -> dict:
    """Write the manifest of a variant set whose compiled bundles are already in folder/<variant dir>/;
    `variants` ({dir, target, cpu_flags}) best first, the baseline last. -> the manifest."""
    manifest = {
        "schema": B.SCHEMA_VERSION, "name": name, "format": B.VARIANTS_FORMAT, "precision": precision,
        "target": target, "variants": [{**v, "bytes": _bytes(folder / v["dir"])} for v in variants],
        "compile": compile_info or {},
        "files": {f"{v['dir']}/{B.MANIFEST}": {"bytes": (folder / v["dir"] / B.MANIFEST).stat().st_size,
                                                "sha256": B.sha256_file(folder / v["dir"] / B.MANIFEST)}
                  for v in variants},
    }
    (folder / B.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
