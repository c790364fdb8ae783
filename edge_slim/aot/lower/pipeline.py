"""The TVM compile pipeline: an ONNX graph (bundle or bare .onnx) -> a compiled bundle (model.so).

One visible list of phases (PHASES); each is timed, reported to a progress callback, and, with
`debug_dump`, writes the IR it produced to DIR/NN-phase.txt:

    load      read and check the ONNX graph: static input shapes, supported operators, precision
    import    tvm.relax.frontend.onnx.from_onnx (int64 token ids via dtype_dict)
    graph     inference decompositions, FastMath, (int8: dequantize fused into its consumer),
              legalize, constant folding, operator fusion (FuseOps + FuseTIR)
    schedule  edge-slim CPU rules (cpu_rules.py) or DLight GPU rules; a MetaSchedule database
              for this model+target is applied first where one exists (see tuning.py)
    prepack   layout-rewrite blocks the rules made (conv weight panels) split out and folded
              into the constants, so no repacking happens at run time
    build     Relax VM lowering + LLVM/CUDA code generation
    export    export_library with the target's (cross) compiler, then the bundle written atomically

A bundle with a describe head (manifest `describe`) has a second graph, the caption decoder: the same
phases compile it into a second library, describe.so, for the same target and precision rules (an int8
decoder stays int8, one carried fp32 by quantize stays fp32), and the compiled bundle's `describe` entry
points at it (docs/compile.md).

Errors a user can act on (missing cross compiler, unsupported operators) are raised before any
long work starts.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


import numpy as np

from ... import targets as T
from ...errors import BadInputError, CompileError, EdgeSlimError, MissingDependencyError, ModelError
from ...runtime import bundle as B
from .graph_passes import (bounded_gather_pass, conv_weights_fp32_pass, erf_gelu_pass, fuse_dequantize_pass,
                           pad_matmul_columns_pass, sigmoid_exp_pass, softmax_last_axis_pass)
from .onnx_rewrites import ONNX_DTYPES, check_operators

COPY_KEYS = ("config", "inputs", "outputs", "tokenizer", "answers", "preprocess", "eval")
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
             "ConvInteger", "QLinearMatMul", "QLinearConv", "MatMulNBits"}


@dataclass
class Job:
    """What one compile needs and what the phases hand on to each other."""
    source: Path | None
    target: T.Target
    recipe: T.Recipe
    precision: str | None = None
    out: Path | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    dynamic: dict[str, int] = field(default_factory=dict)     # symbolic dimension -> upper bound
    binds: dict[str, object] = field(default_factory=dict)    # input -> constant value
    preprocess: dict | None = None                            # image preprocessing spec for `run`
    tune_trials: int | None = None
    cuda_arch: str | None = None
    debug_dump: Path | None = None
    tuning_dir: Path | None = None
    lib_name: str = "model.so"                                # what phase_export writes in workdir
    # filled by the phases
    bundle: B.Bundle | None = None
    onnx_path: Path | None = None
    onnx_model: object = None
    inputs: list[dict] = field(default_factory=list)
    mod: object = None
    tvm_target: object = None
    executable: object = None
    flags: dict = field(default_factory=dict)
    phases: list[dict] = field(default_factory=list)
    workdir: Path | None = None


# ---------------------------------------------------------------- phases
def phase_load(job: Job):
    import onnx
    src = B.resolve(job.source) if job.source is not None else None
    if job.bundle is not None:  # a view of an opened bundle (the describe graph, see describe_job)
        job.onnx_path = job.bundle.model_path
    elif src is None or src.is_dir() or (src.is_file() and src.suffix != ".onnx"):
        job.bundle = B.open_bundle(src)
        if job.bundle.manifest["format"] != "onnx":
            raise ModelError(f"{job.bundle.path} is a {job.bundle.manifest['format']} bundle; compile takes an "
                             "ONNX bundle or a .onnx file")
        job.onnx_path = job.bundle.model_path
    else:
        if not src.is_file():
            raise ModelError(f"model not found: {src}")
        job.onnx_path = src
    try:
        m = onnx.load(str(job.onnx_path))
    except Exception as e:  # onnx raises DecodeError and friends
        raise ModelError(f"{job.onnx_path}: not a readable ONNX model ({e})") from None
    m = _prepare_graph(m, job)
    m = legalize_qlinear(m, job)
    quantized = any(n.op_type in QUANT_OPS for n in m.graph.node)
    if own_model(job) and (not quantized or any(n.op_type == "Shape" for n in m.graph.node)):
        m = _fold_shapes(m, job)  # also folds BatchNorm into its Conv (an int8 graph only when it must)
    check_operators(m)
    graph_prec = "int8" if any(n.op_type in QUANT_OPS for n in m.graph.node) else "fp32"
    want = job.precision or (job.bundle.manifest.get("precision") if job.bundle else None) or graph_prec
    if want == "int8" and graph_prec != "int8":
        raise BadInputError(f"{job.onnx_path} is an fp32 graph; --precision int8 compiles a quantized graph: "
                            "make one with `edge-slim quantize` and compile that")
    if want == "fp32" and graph_prec == "int8":
        want = "int8"  # a quantized graph compiles as what it is
    if want == "fp16" and job.target.kind != "cuda":
        raise BadInputError("--precision fp16 is for cuda targets; CPUs run fp32 or int8 graphs")
    job.precision = want
    job.onnx_model = m
    return None


def _prepare_graph(m, job: Job):
    """Input shapes, bound inputs, constant folding with If inlining, operator rewrites (onnx_rewrites.py)."""
    from . import onnx_rewrites as R
    job.inputs = R.resolve_inputs(m, job.input_shapes, job.dynamic, job.binds)
    if job.binds:
        job.flags["bound_inputs"] = R.bind_inputs(m, job.binds)
    R.apply_input_specs(m, job.inputs)
    if own_model(job):  # the SlimPajama bundles import as exported
        stats = R.fold(m)
        job.flags.update({f"onnx_{k}": v for k, v in stats.items() if v})
        rewritten = R.apply_rewrites(m)
        if rewritten:
            job.flags["onnx_rewrites"] = rewritten
    if job.dynamic:
        job.flags["dynamic_dims"] = dict(job.dynamic)
    return m


def own_model(job: Job) -> bool:
    """A bare .onnx, or a bundle without a tokenizer (an own model quantized by `edge-slim quantize`)."""
    return job.bundle is None or not job.bundle.manifest.get("tokenizer")


def _fold_shapes(m, job: Job):
    """Bring-your-own graphs often compute Reshape targets at run time (Shape -> ... -> Concat),
    which TVM's importer cannot follow: fix the input shapes and let ONNX Runtime's basic,
    semantics-preserving optimizer fold them into constants. It also folds BatchNormalization into
    the Conv before it: Relax's FoldConstant otherwise builds a kernel for each BN's constant part
    (the OCR classifier's graph phase took 48 s with its 35 BNs, 11 s folded; 71 kernels -> 55)."""
    try:
        import onnxruntime  # noqa: F401 - the folding below needs it; without it the graph is imported as it is
    except ImportError:
        return m
    for i in m.graph.input:
        spec = next((x for x in job.inputs if x["name"] == i.name), None)
        if spec and not spec.get("dynamic"):
            for d, v in zip(i.type.tensor_type.shape.dim, spec["shape"]):
                d.ClearField("dim_param")
                d.dim_value = v
    from .onnx_rewrites import ort_basic_optimize
    try:
        folded = ort_basic_optimize(m)
    except Exception:  # ORT cannot load it: import the graph as it is
        return m
    job.flags["shape_folding"] = "onnxruntime basic"
    return folded


def legalize_qlinear(m, job: Job):
    """QLinearConv / QLinearMatMul (ONNX Runtime's static QOperator form, e.g. the int8 conv stem)
    have no TVM importer: rewrite each as DequantizeLinear -> Conv/MatMul -> QuantizeLinear, which
    TVM imports. The int8 weight stays an int8 constant (its dequantize is fused into the conv
    kernel); the int32 bias becomes fp32 (bias * x_scale * w_scale, computed here)."""
    from onnx import helper, numpy_helper
    if not any(n.op_type in ("QLinearConv", "QLinearMatMul") for n in m.graph.node):
        return m
    inits = {i.name: i for i in m.graph.initializer}
    out_nodes, n_done = [], 0
    for n in m.graph.node:
        if n.op_type not in ("QLinearConv", "QLinearMatMul"):
            out_nodes.append(n)
            continue
        x, xs, xz, w, ws, wz, ys, yz = list(n.input[:8])
        p = f"{n.name or n.output[0]}_legal"
        conv = n.op_type == "QLinearConv"
        out_nodes += [helper.make_node("DequantizeLinear", [x, xs, xz], [p + "_x"]),
                      helper.make_node("DequantizeLinear", [w, ws, wz], [p + "_w"], axis=0 if conv else 1)]
        ins = [p + "_x", p + "_w"]
        if conv and len(n.input) > 8 and n.input[8]:
            if not all(k in inits for k in (n.input[8], xs, ws)):
                raise ModelError(f"{n.name}: QLinearConv with a non-constant bias or scales is not supported")
            bias = (numpy_helper.to_array(inits[n.input[8]]).astype(np.float64)
                    * numpy_helper.to_array(inits[xs]).astype(np.float64)
                    * numpy_helper.to_array(inits[ws]).astype(np.float64)).astype(np.float32)
            m.graph.initializer.append(numpy_helper.from_array(bias, p + "_b"))
            ins.append(p + "_b")
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        out_nodes.append(helper.make_node("Conv" if conv else "MatMul", ins, [p + "_y"], **attrs))
        out_nodes.append(helper.make_node("QuantizeLinear", [p + "_y", ys, yz], [n.output[0]]))
        n_done += 1
    del m.graph.node[:]
    m.graph.node.extend(out_nodes)
    job.flags["qlinear_legalized"] = n_done
    return m


def phase_import(job: Job):
    from tvm.relax.frontend.onnx import from_onnx
    shapes = {i["name"]: i["shape"] for i in job.inputs if not i.get("dynamic")}  # symbolic: from the graph
    dtypes = {i["name"]: i["dtype"] for i in job.inputs}
    try:
        job.mod = from_onnx(job.onnx_model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
        if job.dynamic:  # memory is planned for the largest size (Relax reads this attribute)
            job.mod["main"] = job.mod["main"].with_attr("tir_var_upper_bound", dict(job.dynamic))
    except Exception as e:  # the importer raises many kinds; the first line says which op failed
        raise ModelError(f"TVM could not import {job.onnx_path}: {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from None
    return job.mod


def phase_graph(job: Job):
    import tvm
    from tvm import relax
    job.tvm_target = tvm.target.Target(job.target.tvm_target(cuda_arch=job.cuda_arch))
    passes = [relax.transform.DecomposeOpsForInference(), bounded_gather_pass(), softmax_last_axis_pass()]
    padded: dict = {}
    if job.target.kind == "cpu" and job.recipe.schedule == "cpu-rules":
        passes.append(pad_matmul_columns_pass(stats=padded))
    if job.recipe.fast_math:
        passes += [erf_gelu_pass(), sigmoid_exp_pass(), relax.transform.FastMathTransform()]
    if job.precision == "fp16":
        passes.append(relax.transform.ToMixedPrecision(out_dtype="float16"))
    int8_kernel = job.target.int8_kernel if job.precision == "int8" and job.target.kind == "cpu" else None
    if job.precision == "int8":
        if int8_kernel:
            from .int8_kernels import int8_matmul_pass
            int8_stats: dict = {}
            passes += [int8_matmul_pass(int8_kernel, int8_stats), conv_weights_fp32_pass(),
                       relax.transform.DeadCodeElimination()]
        passes.append(fuse_dequantize_pass())
    passes += [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern()]
    if job.precision != "int8":  # FoldConstant would turn int8 weights back into fp32 constants
        passes.append(relax.transform.FoldConstant())
    passes += [relax.transform.FuseOps(), relax.transform.FuseTIR(), relax.transform.AttachAttrLayoutFreeBuffers()]
    with job.tvm_target:
        job.mod = tvm.transform.Sequential(passes)(job.mod)
    if int8_kernel:
        job.flags["int8_kernel"] = int8_kernel
        job.flags["int8_matmuls_integer"] = int8_stats["matmuls"]
        job.flags["int8_dynamic_quantize_fused"] = int8_stats["quantize"]
        job.flags["int8_convs_integer"] = int8_stats["convs"]
        from .int8_kernels import strip_layout_free
        job.mod = strip_layout_free(job.mod)
    if padded:
        job.flags["padded_to_whole_vectors"] = padded
    return job.mod


def phase_schedule(job: Job):
    import tvm
    from tvm.s_tir import dlight as dl
    from . import tuning
    trials = job.tune_trials if job.tune_trials is not None else job.recipe.tune_trials
    with job.tvm_target:
        db = tuning.database_dir(job) if (trials or tuning.has_database(job)) else None
        if trials:
            tuning.tune(job, trials, db)
            job.flags["tune_trials"] = trials
        if db is not None and tuning.has_database(job):
            job.mod = tuning.apply_database(job, db)
            job.flags["tuning_database"] = str(db)
        if job.recipe.schedule == "cpu-rules":
            from .cpu_rules import Isa, cpu_rules
            isa = Isa(job.target.vector_bits, job.target.vector_registers)
            job.mod = dl.ApplyDefaultSchedule(*cpu_rules(isa))(job.mod)
        elif job.recipe.schedule == "dlight-gpu":
            job.mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                              dl.gpu.GeneralReduction(), dl.gpu.Fallback())(job.mod)
    funcs = [f for _, f in job.mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    job.flags["kernels"] = len(funcs)
    job.flags["kernels_scheduled"] = sum(1 for f in funcs if f.attrs and f.attrs.get("tirx.is_scheduled"))
    return job.mod


def phase_prepack(job: Job):
    from tvm import relax
    if not job.recipe.prepack_weights:
        return None
    with job.tvm_target:
        job.mod = relax.transform.SplitLayoutRewritePreproc()(job.mod)
        # After fusion the only calls with all-constant arguments are these weight repacks (int8
        # weights are fused into their consumers, see fuse_dequantize_pass), so folding evaluates
        # exactly the repacks; the repack kernels are then dead and dropped.
        job.mod = relax.transform.FoldConstant()(job.mod)
        job.mod = relax.transform.DeadCodeElimination(["main"])(job.mod)
    return job.mod


def phase_build(job: Job):
    import tvm
    if job.target.kind == "cuda":
        os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
        _ensure_cuda_codegen()
    with job.tvm_target:
        job.executable = tvm.compile(job.mod, target=job.tvm_target)
    return None


def phase_export(job: Job):
    import tvm
    from tvm.support import cc as tcc
    job.workdir = Path(tempfile.mkdtemp(prefix="edge-slim-compile-"))
    lib = job.workdir / job.lib_name
    cc = shutil.which(job.target.cc)
    if job.target.host_triple == T.host_triple():
        job.executable.export_library(str(lib), fcompile=tcc.cross_compiler(cc) if cc else None)
    else:
        job.executable.export_library(str(lib), fcompile=tcc.cross_compiler(cc))
    job.flags["cc"] = cc
    del tvm
    return None


PHASES: list[tuple[str, Callable]] = [
    ("load", phase_load), ("import", phase_import), ("graph", phase_graph), ("schedule", phase_schedule),
    ("prepack", phase_prepack), ("build", phase_build), ("export", phase_export),
]


# ---------------------------------------------------------------- the driver
def compile_model(source: str | os.PathLike | None, target: str, *, precision: str | None = None,
                  out: str | os.PathLike | None = None, tune_trials: int | None = None,
                  input_shapes: dict[str, list[int]] | None = None, cuda_arch: str | None = None,
                  recipe: str | None = None, debug_dump: str | os.PathLike | None = None,
                  tuning_dir: str | os.PathLike | None = None, dynamic: dict[str, int] | None = None,
                  binds: dict[str, object] | None = None, preprocess: dict | None = None,
                  progress: Callable[[dict], None] | None = None, split: bool = True) -> dict:
    """Compile `source` for `target`; returns the written bundle's manifest plus its path.

    `split` (SlimPajama bundles) also compiles the graph's image and text parts (aot/lower/split.py), so that
    a session encodes an image once for many texts.

    `input_shapes` fixes dynamic dimensions, `dynamic` keeps named ones symbolic ({dim: upper bound}),
    `binds` turns inputs into constants ({input: value}), `preprocess` (an image spec, see
    edge_slim/vision/spec.py) is stored for `edge-slim run IMAGE`.
    """
    tgt = T.get_target(target)
    if tgt.variants:
        from .variants import compile_variants
        return compile_variants(source, tgt, out, precision, progress, tune_trials=tune_trials,
                                input_shapes=input_shapes, cuda_arch=cuda_arch, recipe=recipe, debug_dump=debug_dump,
                                tuning_dir=tuning_dir, dynamic=dynamic, binds=binds, preprocess=preprocess, split=split)
    rec = T.get_recipe(recipe or tgt.recipe)
    check_toolchain(tgt)
    src = Path(source) if source is not None else None
    job = Job(source=src, target=tgt, recipe=rec, precision=precision, input_shapes=dict(input_shapes or {}),
              tune_trials=tune_trials, cuda_arch=cuda_arch, debug_dump=Path(debug_dump) if debug_dump else None,
              tuning_dir=Path(tuning_dir) if tuning_dir else None, dynamic=dict(dynamic or {}),
              binds=dict(binds or {}), preprocess=preprocess)
    job.out = Path(out) if out else default_output(src, tgt, job.precision)
    t_start = time.perf_counter()
    describe, parts = None, []
    try:
        run_phases(job, progress)
        describe = describe_job(job)
        if describe is not None:
            run_phases(describe, progress, "describe:")
        if split:
            from .split import part_jobs
            parts = part_jobs(job) or []
            for p in parts:
                run_phases(p, progress, f"{Path(p.lib_name).stem} part:")
        manifest = write_compiled_bundle(job, time.perf_counter() - t_start, describe, parts)
    finally:
        for j in (job, describe, *parts):
            if j is not None and j.workdir is not None:
                shutil.rmtree(j.workdir, ignore_errors=True)
        if parts:
            shutil.rmtree(parts[0].bundle.path, ignore_errors=True)   # the part graphs' folder
    return {**manifest, "path": str(job.out)}


def run_phases(job: Job, progress: Callable[[dict], None] | None = None, prefix: str = "") -> None:
    """PHASES in order on `job`, each timed (job.phases), reported and, with job.debug_dump, its IR written."""
    for i, (name, fn) in enumerate(PHASES):
        if progress:
            progress({"phase": prefix + name, "index": i + 1, "total": len(PHASES), "state": "start"})
        t0 = time.perf_counter()
        try:
            ir = fn(job)
        except EdgeSlimError:
            raise
        except Exception as e:   # a bug here or in TVM: one line for the user, the traceback in a file
            raise CompileError(f"the {prefix}{name} phase failed: {type(e).__name__}: "
                               f"{(str(e).strip().splitlines() or [''])[0][:300]} (full traceback in "
                               f"{_write_traceback(job, prefix + name)})") from e
        dt = time.perf_counter() - t0
        job.phases.append({"phase": name, "seconds": round(dt, 3)})
        if job.debug_dump is not None and ir is not None:
            job.debug_dump.mkdir(parents=True, exist_ok=True)
            (job.debug_dump / f"{i + 1:02d}-{name}.txt").write_text(ir.script(show_meta=False))
        if progress:
            progress({"phase": prefix + name, "index": i + 1, "total": len(PHASES), "state": "done", "seconds": dt})


def _write_traceback(job: Job, phase: str) -> Path:
    """Write the exception being handled to a log beside the output (kept for a bug report) -> its path."""
    import traceback
    text = f"edge-slim compile: {phase} phase, target {job.target.name}, source {job.source}\n" + traceback.format_exc()
    for folder in (job.out.parent if job.out is not None else None, Path(tempfile.gettempdir())):
        if folder is None:
            continue
        try:
            path = folder / f"{job.out.name if job.out is not None else 'edge-slim'}.compile-error.log"
            path.write_text(text)
            return path
        except OSError:
            continue
    return Path("(not written)")


DESCRIBE_LIB = "describe.so"


def describe_job(job: Job) -> Job | None:
    """The compile of the bundle's caption decoder graph (manifest `describe`), or None without one: the same
    target, recipe and tuning settings; precision from its graph (fp16 when the model is compiled fp16)."""
    spec = job.bundle.manifest.get("describe") if job.bundle is not None else None
    if not spec:
        return None
    m = job.bundle.manifest
    if spec["graph"] not in m["files"]:
        raise ModelError(f"{job.bundle.path}: the manifest names {spec['graph']} for describe, but the bundle does "
                         "not hold it; re-export or re-quantize the bundle")
    view = B.Bundle(job.bundle.path, {**m, "model_file": spec["graph"], "inputs": spec["inputs"],
                                      "outputs": spec["outputs"], "precision": spec.get("precision")})
    return Job(source=None, target=job.target, recipe=job.recipe, bundle=view, lib_name=DESCRIBE_LIB,
               precision="fp16" if job.precision == "fp16" else None, tune_trials=job.tune_trials,
               cuda_arch=job.cuda_arch, tuning_dir=job.tuning_dir,
               debug_dump=job.debug_dump / "describe" if job.debug_dump is not None else None)


def default_output(src: Path | None, tgt: T.Target, precision: str | None) -> Path:
    stem = src.stem if src is not None and src.suffix == ".onnx" else (src.name if src else "slimpajama-tiny")
    return Path.cwd() / f"{stem}-{tgt.name}{'-' + precision if precision else ''}"


def check_toolchain(tgt: T.Target) -> None:
    """Fail before any long work when the target's compilers are missing, naming what to install."""
    try:
        import tvm  # noqa: F401
    except ImportError:
        raise MissingDependencyError("compiling needs the TVM compiler: pip install 'edge-slim[tvm]'") from None
    st = T.toolchain_status(tgt)
    if st["missing"]:
        raise MissingDependencyError(f"target {tgt.name} needs: " + "; ".join(st["missing"]))


def write_compiled_bundle(job: Job, total_s: float, describe: Job | None = None, parts: list | None = None) -> dict:
    import tvm
    import tvm_ffi
    src_manifest = job.bundle.manifest if job.bundle else {}
    name = src_manifest.get("name") or job.onnx_path.stem
    outputs = src_manifest.get("outputs") or _onnx_outputs(job.onnx_model)
    target_info = {**job.target.artifact_info(), "tvm": job.target.tvm_target(cuda_arch=job.cuda_arch),
                   "cuda_arch": (job.cuda_arch or job.target.cuda_arch) if job.target.kind == "cuda" else None,
                   "recipe": job.recipe.name}
    manifest = {
        "schema": B.SCHEMA_VERSION, "name": name, "format": "tvm", "precision": job.precision,
        "model_file": "model.so",
        **{k: src_manifest.get(k) for k in COPY_KEYS},
        "inputs": job.inputs if own_model(job) else src_manifest.get("inputs") or job.inputs,
        "preprocess": job.preprocess or src_manifest.get("preprocess"),
        "outputs": outputs,
        "target": target_info,
        "toolchain": {"tvm": tvm.__version__, "tvm-ffi": getattr(tvm_ffi, "__version__", None),
                      "cc": _compiler_version(job.flags.get("cc")),
                      "nvcc": _nvcc_version() if job.target.kind == "cuda" else None,
                      "python": platform.python_version()},
        "compile": {"recipe": job.recipe.to_dict(), "flags": job.flags,
                    "phases": job.phases, "seconds": round(total_s, 3)},
        "source_model_sha256": B.sha256_file(job.onnx_path),
        "runtime": runtime_requirements(job.target),
    }
    if not job.bundle:
        manifest["eval"] = {}
    if describe is not None:  # the decoder's library, driven as the ONNX graph was (same inputs and outputs)
        manifest["describe"] = {**src_manifest["describe"], "graph": DESCRIBE_LIB, "precision": describe.precision,
                                "source_sha256": B.sha256_file(describe.onnx_path),
                                "compile": {"flags": describe.flags, "phases": describe.phases}}
    if parts:
        from .split import manifest_entry
        manifest["split"] = manifest_entry(parts)
    with B.staging_dir(job.out) as tmp:
        shutil.copy2(job.workdir / "model.so", tmp / "model.so")
        if describe is not None:
            shutil.copy2(describe.workdir / DESCRIBE_LIB, tmp / DESCRIBE_LIB)
        for p in parts or ():
            shutil.copy2(p.workdir / p.lib_name, tmp / p.lib_name)
        manifest = B.write_manifest(tmp, manifest)
    return manifest


def runtime_requirements(tgt: T.Target) -> dict:
    """What the device needs to run the artifact (no TVM compiler)."""
    py = "apache-tvm-ffi==0.1.14.post0 and libtvm_runtime.so from apache-tvm==0.27.0.post1 (tvm/lib/)"
    need = {"python_packages": ["numpy", "apache-tvm-ffi==0.1.14.post0"], "libraries": ["libtvm_runtime.so"],
            "note": py}
    if tgt.kind == "cuda":
        need["libraries"].append("libtvm_runtime_cuda.so (and the CUDA driver libcuda.so.1, libcudart)")
    return need


def _onnx_outputs(m) -> list[dict]:
    outs = []
    for o in m.graph.output:
        tt = o.type.tensor_type
        outs.append({"name": o.name, "shape": [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim],
                     "dtype": ONNX_DTYPES.get(tt.elem_type, "float32")})
    return outs


def _compiler_version(cc: str | None) -> str | None:
    if not cc:
        return None
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=20).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _nvcc_version() -> str | None:
    nvcc = T.find_nvcc()
    if not nvcc:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
        return [line for line in out.splitlines() if "release" in line][-1].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


# ---------------------------------------------------------------- CUDA on a machine without a GPU
STUB_FUNCS = ("cuDeviceGetName", "cuFuncSetAttribute", "cuLaunchKernelEx", "cuModuleGetFunction",
              "cuModuleLoadData", "cuModuleUnload", "cuTensorMapEncodeTiled", "cuGetErrorName", "cuGetErrorString")


def _stub_libcuda() -> Path:
    """A libcuda.so.1 whose every function returns CUDA_ERROR_NO_DEVICE, built once and used only
    in the compiling process so TVM's CUDA runtime library loads and cubins are built with nvcc.
    It is never put into an artifact or a bundle."""
    cache = Path(os.environ.get("EDGE_SLIM_CACHE", Path.home() / ".cache" / "edge-slim")) / "cuda-stub"
    so = cache / "libcuda.so.1"
    if so.exists():
        return so
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / "stub.c"
    src.write_text("".join(f"int {f}(void) {{ return 100; }}\n" for f in STUB_FUNCS))
    tmp = cache / f".libcuda.so.1.{os.getpid()}"
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(src)], check=True)
    os.replace(tmp, so)
    return so


def _ensure_cuda_codegen() -> None:
    """Make sure libtvm_runtime_cuda.so is loaded (TVM skips it silently without a driver, and then
    embeds CUDA source instead of cubins)."""
    import ctypes
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes
    if "tvm_runtime_cuda" in _LOADED_LIBS:
        return
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        ctypes.CDLL(str(_stub_libcuda()), mode=ctypes.RTLD_GLOBAL)
    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                                                           extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
    except (OSError, RuntimeError) as e:
        raise MissingDependencyError(f"TVM's CUDA runtime library could not be loaded ({e}); it needs the CUDA "
                                     "runtime libcudart from the CUDA toolkit") from None
    nvcc = T.find_nvcc()
    if nvcc:
        os.environ["PATH"] = f"{Path(nvcc).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def parse_shapes(specs: list[str] | tuple[str, ...]) -> dict[str, list[int]]:
    """NAME=1,3,224,224 -> {"NAME": [1, 3, 224, 224]}."""
    out = {}
    for s in specs:
        name, _, dims = s.partition("=")
        try:
            out[name] = [int(d) for d in dims.replace("x", ",").split(",") if d]
        except ValueError:
            raise BadInputError(f"--input-shape {s!r}: expected NAME=D0,D1,... with integer sizes") from None
        if not name or not out[name] or min(out[name]) < 1:
            raise BadInputError(f"--input-shape {s!r}: expected NAME=D0,D1,... with sizes >= 1")
    return out


__all__ = ["PHASES", "compile_model", "check_operators", "parse_shapes"]
