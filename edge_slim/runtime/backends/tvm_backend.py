"""TVM backend: runs a compiled bundle (model.so) through the Relax VM with the light runtime.

No `import tvm`: the device needs apache-tvm-ffi (a 3 MB wheel) and libtvm_runtime.so (3.4 MB;
plus libtvm_runtime_cuda.so for CUDA artifacts), not the 259 MB compiler. The runtime library is
found at $EDGE_SLIM_TVM_RUNTIME (a file or a directory), else in an installed `tvm` package's lib/
directory (located without importing it).

Before anything is dlopen'ed: the bundle's checksums were verified by open_bundle, and the
artifact's ELF machine, the CPU features it was built for, and (for CUDA) the driver are checked
against this host, so a wrong artifact is refused with both sides named instead of crashing.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import sys
import threading
from pathlib import Path

import numpy as np

from ...errors import BadInputError, MissingDependencyError, ModelError
from ...targets import ELF_MACHINES, cpu_flags, host_triple
from .. import threads as T
from ..machine import physical_cores, usable_cpus


def _import_tvm_ffi():
    """Import tvm_ffi without torch: tvm_ffi 0.1.14 imports torch eagerly when it is installed (a
    Windows symbol-clash workaround), which costs seconds of cold start and drags torch into every
    process that runs a compiled model. Unless torch is already loaded, hide it during the import."""
    os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tvm_ffi tolerates
    try:
        import tvm_ffi as mod
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return mod


try:
    tvm_ffi = _import_tvm_ffi()
except ImportError as e:  # backend_class turns this into "pip install 'edge-slim[tvm-runtime]'"
    raise ImportError(e.msg, name="apache-tvm-ffi") from None

ENV_RUNTIME = "EDGE_SLIM_TVM_RUNTIME"
ELF_NAMES = {62: "x86-64", 183: "aarch64", 40: "arm", 243: "riscv"}
DEVICE_TYPES = {"cpu": 1, "cuda": 2}
POOLED_ALLOCATOR = 2
_LOAD_LOCK = threading.Lock()
_THREADS_LOCK = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}


def elf_machine(path: Path) -> int:
    """The e_machine field of an ELF file (raises ModelError when it is not an ELF)."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ModelError(f"{path} is not an ELF shared library")
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def runtime_dir() -> Path:
    env = os.environ.get(ENV_RUNTIME)
    if env:
        p = Path(env)
        return p.parent if p.is_file() else p
    try:
        spec = importlib.util.find_spec("tvm")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        d = Path(spec.origin).parent / "lib"
        if (d / "libtvm_runtime.so").is_file():
            return d
    raise MissingDependencyError(
        "the tvm backend needs libtvm_runtime.so: pip install apache-tvm==0.27.0.post1 (only its "
        f"tvm/lib/libtvm_runtime.so is loaded), or set {ENV_RUNTIME} to the library's path")


def _load_runtime(cuda: bool) -> None:
    with _LOAD_LOCK:
        # TVM sizes its CPU pool once, at first use, to TVM_NUM_THREADS or else hardware_concurrency() / 2 on
        # x86 ("ignore hyper-threading"): 1 worker on a 2-vCPU VM without SMT, where threads=2 then silently
        # ran 1 thread. The pool gets every usable CPU; how many a call uses is set_threads' job.
        os.environ.setdefault("TVM_NUM_THREADS", str(len(usable_cpus())))
        names = ["libtvm_runtime.so"] + (["libtvm_runtime_cuda.so"] if cuda else [])
        for name in names:
            if name in _loaded:
                continue
            lib = runtime_dir() / name
            if not lib.is_file():
                raise MissingDependencyError(f"{lib} is missing; the tvm backend needs it for this artifact")
            try:
                _loaded[name] = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            except OSError as e:
                raise MissingDependencyError(f"cannot load {lib}: {e}") from None


def has_cuda_driver() -> bool:
    """A CUDA driver that initializes (cuInit == CUDA_SUCCESS); a build-time stub has no cuInit."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        return hasattr(lib, "cuInit") and lib.cuInit(0) == 0
    except (OSError, AttributeError):
        return False


def check_artifact(bundle) -> None:
    """Refuse an artifact this host cannot run, naming the artifact's target and the host."""
    m = bundle.manifest
    tgt = m.get("target") or {}
    lib = bundle.model_path
    art = elf_machine(lib)
    host = ELF_MACHINES.get(host_triple(), (None,))[0]
    art_name = ELF_NAMES.get(art, f"ELF machine {art}")
    host_name = ELF_NAMES.get(host, platform.machine())
    if host is not None and art != host:
        raise ModelError(f"{bundle.path} is built for {art_name} (target {tgt.get('name', '?')}); this host is "
                         f"{host_name}: compile it with --target for this machine, or run it on the device")
    if tgt.get("kind") == "cuda" and not has_cuda_driver():
        raise ModelError(f"{bundle.path} is a CUDA artifact (target {tgt.get('name', '?')}, "
                         f"{tgt.get('cuda_arch', '?')}); this host ({host_name}) has no CUDA driver "
                         "(libcuda.so.1 not found): run it on the GPU machine or compile for a CPU target")
    need = set(tgt.get("cpu_flags") or [])
    have = cpu_flags()
    if need and have and not need <= have:
        raise ModelError(f"{bundle.path} is built for {tgt.get('name', '?')} and needs CPU features "
                         f"{', '.join(sorted(need - have))}, which this host's CPU lacks: compile for a "
                         "baseline target (x86-64) instead")


_current_threads: list[int] = [0]
_pool_spin: list[int | None] = [None]   # the spin count TVM's pool started with (None: not started by us)


def pool_spin_count(p: T.Policy) -> int:
    """The spin count of TVM's thread pool: fixed by edge_slim.runtime.threads' policy `p` when the first
    TVM session starts the pool (libtvm_runtime reads TVM_THREAD_POOL_SPIN_COUNT once), the same after."""
    with _THREADS_LOCK:
        if _pool_spin[0] is None:
            _pool_spin[0] = T.tvm_spin_count(p)
        return _pool_spin[0]


def set_threads(n: int) -> None:
    """TVM's CPU thread pool is process-wide; n threads from now on (a no-op if already so).

    Configuring the pool pins the calling thread to one core (TVM binds its worker 0, the caller), and
    every thread the app starts later inherits that mask: the app's own threads and ONNX Runtime's pool
    would all share one core (measured: ORT at 2 threads 3x slower after a TVM model ran). So the caller's
    CPU mask is put back as it was; TVM's own workers stay bound.
    """
    with _THREADS_LOCK:
        if _current_threads[0] != int(n):
            mask = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
            try:
                tvm_ffi.get_global_func("runtime.config_threadpool")(1, int(n))  # 1: big cores (all on x86)
            finally:
                if mask is not None:
                    os.sched_setaffinity(0, mask)
            _current_threads[0] = int(n)


class TvmBackend:
    name = "tvm"

    def __init__(self, bundle, threads: int | None = None):
        m = bundle.manifest
        if m["format"] != "tvm":
            raise ModelError(f"{bundle.path} is a {m['format']} bundle; the tvm backend runs compiled bundles "
                             "(make one with `edge-slim compile`)")
        check_artifact(bundle)
        kind = (m.get("target") or {}).get("kind", "cpu")
        _load_runtime(cuda=kind == "cuda")
        self.bundle = bundle
        self._lease = T.SESSIONS.join(self)   # before the pool starts: its spin count depends on the others
        try:
            self._open(bundle, m, kind, threads)
        except BaseException:
            self._lease.close()
            raise

    def _open(self, bundle, m, kind, threads) -> None:
        self.spin_count = pool_spin_count(T.SESSIONS.current())
        # the pool is process-wide, so every backend sets its count (None: one thread per physical core,
        # as ONNX Runtime chooses) before each call; set_threads is a no-op when it is already so
        self.threads = int(threads) if threads else physical_cores()
        set_threads(self.threads)
        self.device = tvm_ffi.device(kind, 0)
        self._main = _Library(bundle.model_path, kind, self.device, m["inputs"], m["outputs"])
        self.inputs = m["inputs"]
        self.output_names = [o["name"] for o in m["outputs"]]
        self._lock = threading.Lock()  # one VM per library: calls are serialized
        self._parts = None
        self._texts, self.texts_at_once = None, False
        sp = m.get("split")
        if sp:   # image once, many texts (aot/lower/split.py): the graph's image and text parts
            from ..split import Split
            lib = {p: _Library(bundle.graph(sp[p]["graph"], f"the {p} part").model_path, kind, self.device,
                               sp[p]["inputs"], sp[p]["outputs"]) for p in ("image", "text", "texts") if p in sp}
            if "texts" in lib:      # the text part for sp["texts"]["batch"] texts per call
                self._texts, self.texts_at_once = (lib["texts"], int(sp["texts"]["batch"])), True
            image_out = [o["name"] for o in sp["image"]["outputs"]]
            cut = tuple(i["name"] for i in sp["text"]["inputs"] if i["name"] != "tokens")
            self._parts = (lib["image"], lib["text"],
                           Split((), (), cut, tuple(n for n in image_out if n not in cut),
                                 tuple(o["name"] for o in sp["text"]["outputs"])))

    def close(self) -> None:
        """Stop counting as a live session (edge_slim.runtime.threads); the VM is freed with the backend."""
        self._lease.close()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            set_threads(self.threads)
            return self._main(feeds)

    # -- image once, many texts ---------------------------------------------------------------
    def split(self):
        """The Split of the compiled parts (None: compiled without them, `edge-slim compile --no-split`)."""
        return self._parts[2] if self._parts else None

    def encode(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            set_threads(self.threads)
            return self._parts[0](feeds)

    def run_text(self, state: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The text part on an encoded image. With texts_at_once, `tokens` may hold several texts: they run
        on texts.so in groups of its batch (the last group padded by repeating its last text), and the
        text outputs have one row per text."""
        sp = self._parts[2]
        cut = {c: state[c] for c in sp.cut}
        tokens = np.asarray(feeds["tokens"])
        with self._lock:
            set_threads(self.threads)
            if self._texts is None or len(tokens) == 1:
                out = self._parts[1]({**cut, **feeds})
            else:
                lib, batch = self._texts
                groups = []
                for i in range(0, len(tokens), batch):
                    group = tokens[i:i + batch]
                    pad = np.concatenate([group, np.repeat(group[-1:], batch - len(group), axis=0)])
                    groups.append((len(group), lib({**cut, **feeds, "tokens": pad})))
                out = {k: np.concatenate([o[k][:n] for n, o in groups]) for k in groups[0][1]}
        return sp.outputs(self.output_names, out, state)


class _Library:
    """One compiled library's Relax VM: its `main` called on feeds named as its manifest's inputs."""

    def __init__(self, path: Path, kind: str, device, inputs: list[dict], outputs: list[dict]):
        try:
            self._lib = tvm_ffi.load_module(str(path))
            self._vm = self._lib["vm_load_executable"]()
            init = [DEVICE_TYPES[kind], 0, POOLED_ALLOCATOR]
            if kind != "cpu":
                init += [DEVICE_TYPES["cpu"], 0, POOLED_ALLOCATOR]  # the host runs shape functions
            self._vm["vm_initialization"](*init)
            self._main = self._vm["main"]
        except Exception as e:  # tvm_ffi raises its own error types
            raise ModelError(f"{path}: the TVM runtime cannot load it ({str(e).splitlines()[0]})") from None
        self.device = device
        self._alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
        self._copy_in = tvm_ffi.get_global_func("runtime.TVMTensorCopyFromBytes")
        self._copy_out = tvm_ffi.get_global_func("runtime.TVMTensorCopyToBytes")
        self.inputs = inputs
        self.output_names = [o["name"] for o in outputs]
        # input tensors owned by the runtime (aligned as the kernels need), reused on every call
        # (an input with a symbolic dimension, compiled with --dynamic, gets its tensor per call instead)
        self._in = [None if i.get("dynamic") else self._alloc(tuple(i["shape"]), i["dtype"], self.device, "global")
                    for i in self.inputs]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Not thread-safe (the caller holds its backend's lock)."""
        arrs = check_feeds(self.inputs, feeds)
        ins = [t if t is not None else self._alloc(a.shape, str(a.dtype), self.device, "global")
               for t, a in zip(self._in, arrs)]
        for t, a in zip(ins, arrs):
            self._copy_in(t, ctypes.c_void_p(a.ctypes.data), a.nbytes)
        res = self._main(*ins)
        outs = list(res) if not hasattr(res, "shape") else [res]
        return {name: self._to_numpy(o) for name, o in zip(self.output_names, outs)}

    def _to_numpy(self, t) -> np.ndarray:
        if self.device.dlpack_device_type() == 1:
            return np.array(np.from_dlpack(t), copy=True)
        out = np.empty(tuple(t.shape), dtype=str(t.dtype))
        self._copy_out(t, ctypes.c_void_p(out.ctypes.data), out.nbytes)
        return out


def check_feeds(inputs: list[dict], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The feeds of a compiled model's manifest `inputs`, in order, as contiguous arrays of its dtypes; a missing
    input or a wrong shape (a symbolic dimension out of its bounds) is a BadInputError."""
    arrs, sizes = [], {}
    for spec in inputs:
        if spec["name"] not in feeds:
            raise BadInputError(f"missing input {spec['name']!r} (the model takes "
                                f"{', '.join(i['name'] for i in inputs)})")
        a = np.require(np.asarray(feeds[spec["name"]], dtype=spec["dtype"]), requirements="C")  # keeps a 0-d input 0-d
        if spec.get("dynamic"):
            _check_dynamic(spec, a.shape, sizes)
        elif list(a.shape) != list(spec["shape"]):
            raise BadInputError(f"input {spec['name']!r} has shape {list(a.shape)}; the compiled model "
                                f"takes {spec['shape']}")
        arrs.append(a)
    return arrs


def _check_dynamic(spec: dict, shape: tuple, sizes: dict) -> None:
    """A symbolic dimension (compiled with --dynamic NAME=MAX) takes 1..MAX, the same size in every input."""
    want = spec["shape"]
    ok = len(shape) == len(want)
    for d, g in zip(want, shape) if ok else ():
        if isinstance(d, str):
            hi = spec["dynamic"][d]
            if not 1 <= g <= hi:
                raise BadInputError(f"input {spec['name']!r} has {d}={g}; the compiled model takes {d} from 1 to {hi} "
                                    f"(shape {want}; recompile with --dynamic {d}=N for more)")
            if sizes.setdefault(d, g) != g:
                raise BadInputError(f"input {spec['name']!r} has {d}={g}, another input {d}={sizes[d]}; they must agree")
        elif d != g:
            ok = False
    if not ok:
        raise BadInputError(f"input {spec['name']!r} has shape {list(shape)}; the compiled model takes {want}")


def run_bundle(path, inputs: dict[str, str], output_dir=None, backend: str = "auto",
               threads: int | None = None, preprocess: dict | None = None, values_max: int = 64) -> dict:
    """Run any bundle (compiled or ONNX, tokenizer or not) on .npy inputs, or image files for an image model
    (made into tensors by `preprocess` or the bundle's stored spec, edge_slim/vision/spec.py); outputs as
    .npy files, and their values when they have at most `values_max` elements.

    (Generic over backends; lives here because `edge-slim run` exists for compiled bring-your-own
    models. It belongs in edge_slim/runtime/ once that module exists.)
    """
    from .. import bundle as B
    from . import backend_class
    b = B.open_bundle(path)
    name = backend if backend != "auto" else ("tvm" if b.manifest["format"] == "tvm" else "ort")
    be = backend_class(name)(b, threads=threads)
    from ...vision.spec import image_tensor, is_image_file
    image_spec = preprocess or b.manifest.get("preprocess")
    feeds = {}
    for spec in b.manifest["inputs"]:
        if spec["name"] not in inputs:
            raise BadInputError(f"missing --input {spec['name']}=FILE.npy (the model takes "
                                f"{', '.join(i['name'] + str(i['shape']) for i in b.manifest['inputs'])})")
    for k, f in inputs.items():
        if k not in [i["name"] for i in b.manifest["inputs"]]:
            raise BadInputError(f"--input {k}: the model has no input {k!r}")
        if is_image_file(f):
            if not (isinstance(image_spec, dict) and image_spec.get("kind") == "image"):
                raise BadInputError(f"--input {k}={f} is an image, and the bundle stores no image preprocessing: "
                                    "pass --preprocess 'size=HxW mean=... std=...' (or compile with --preprocess)")
            feeds[k] = image_tensor(f, image_spec)
            continue
        try:
            feeds[k] = np.load(f, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInputError(f"--input {k}={f}: not a readable .npy file ({e})") from None
    outs = be.run(feeds)
    rows = []
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    for k, v in outs.items():
        row = {"name": k, "shape": list(v.shape), "dtype": str(v.dtype)}
        if output_dir is not None:
            f = Path(output_dir) / f"{k}.npy"
            np.save(f, v)
            row["file"] = str(f)
        else:
            row["preview"] = np.array2string(v.ravel()[:8], precision=4)
        if v.size <= values_max:
            row["values"] = v.tolist()
        rows.append(row)
    return {"bundle": str(b.path), "backend": name, "outputs": rows}
