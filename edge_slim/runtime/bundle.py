"""The model bundle: a directory with manifest.json and the files it lists, each with a sha256.

Loading verifies every checksum before anything is deserialized or dlopen'ed.
A bundle may also be a single .tar archive of such a directory (see docs/bundle.md).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("schema", "name", "format", "precision", "model_file", "config", "inputs", "outputs",
                 "tokenizer", "answers", "preprocess", "files")
VARIANTS_FORMAT = "variants"      # several compiled bundles of one model in sub-directories (see open_bundle)
VARIANT_ENV = "EDGE_SLIM_VARIANT"  # a target name: load that variant of a variant set, not the best one


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Bundle:
    path: Path        # the bundle directory
    manifest: dict

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model_file"]

    def file(self, name: str) -> Path:
        return self.path / name

    def graph(self, name: str, what: str) -> "Bundle":
        """A view of this bundle whose model file is the extra graph `name` (e.g. the describe
        decoder), for a backend to load; the graph must be one of the checksummed files."""
        if name not in self.manifest["files"]:
            raise ModelError(f"{self.path}: the manifest names {name} for {what}, but the bundle does not hold it "
                             "(the bundle is incomplete: re-export, re-quantize or re-compile it)")
        return Bundle(self.path, {**self.manifest, "model_file": name})


def default_model_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "models" / "slimpajama-tiny"


def shipped_models() -> list[str]:
    """Names of the bundles shipped in the package (slimpajama-tiny, slimpajama-tiny-int8, ...)."""
    root = default_model_dir().parent
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file())


def resolve(path: str | os.PathLike | None) -> Path:
    """A bundle path: None is the shipped default, a bare name that is not a path names a shipped bundle."""
    if path is None:
        return default_model_dir()
    p = Path(path)
    if not p.exists() and len(p.parts) == 1 and (default_model_dir().parent / p.name / MANIFEST).is_file():
        return default_model_dir().parent / p.name
    return p


def _extract_archive(path: Path) -> Path:
    """Unpack a bundle archive into a private cache directory keyed by the archive's hash."""
    digest = sha256_file(path)[:16]
    dest = Path(tempfile.gettempdir()) / f"edge-slim-bundle-{digest}"
    if (dest / MANIFEST).exists():
        return dest
    try:
        with tarfile.open(path) as tf, staging_dir(dest) as tmp:
            tf.extractall(tmp, filter="data")
            inner = [p for p in tmp.iterdir()]
            if len(inner) == 1 and inner[0].is_dir() and (inner[0] / MANIFEST).exists():
                for p in inner[0].iterdir():
                    p.rename(tmp / p.name)
                inner[0].rmdir()
    except (tarfile.TarError, OSError) as e:
        raise ModelError(f"{path}: not a readable bundle archive ({e})") from None
    return dest


def open_bundle(path: str | os.PathLike | None = None, verify: bool = True) -> Bundle:
    """Open and verify a bundle directory or archive; None means the shipped SlimPajama-Tiny."""
    p = resolve(path)
    if not p.exists():
        raise ModelError(f"model not found: {p} (pass a bundle directory or archive, or a shipped model's name: "
                         f"{', '.join(shipped_models())})")
    if p.is_file():
        if p.suffix == ".onnx":
            raise ModelError(f"{p} is a bare ONNX file; `edge-slim compile` takes it, but running needs a bundle "
                             "directory with a manifest.json")
        p = _extract_archive(p)
    mf = p / MANIFEST
    if not mf.is_file():
        raise ModelError(f"{p} is not a model bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{mf} is not valid JSON ({e}); the bundle is damaged, export or download it again") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"{mf} is not a manifest object")
    if manifest.get("format") == VARIANTS_FORMAT:
        chosen = open_bundle(_variant_dir(p, manifest, verify), verify)
        chosen.manifest["variant_of"] = {"path": str(p), "target": (manifest.get("target") or {}).get("name"),
                                         "variants": [v["target"] for v in manifest["variants"]]}
        return chosen
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ModelError(f"{mf} lacks {', '.join(missing)}; the bundle is damaged or from another tool")
    if manifest["schema"] != SCHEMA_VERSION:
        raise ModelError(f"{p}: bundle schema {manifest['schema']} is not supported (this edge-slim reads "
                         f"schema {SCHEMA_VERSION}); upgrade edge-slim or re-export the model")
    b = Bundle(p, manifest)
    if verify:
        verify_bundle(b)
    return b


def pick_variant(variants: list[dict], flags: set[str], want: str | None = None) -> dict:
    """The variant to load: `want` by target name if given, else the first (they are listed best first) whose
    cpu_flags the host has; with no flags known (/proc/cpuinfo unreadable) the last, the baseline."""
    if want:
        for v in variants:
            if v["target"] == want:
                return v
        raise ModelError(f"{VARIANT_ENV}={want} names no variant of this artifact; it holds: "
                         f"{', '.join(v['target'] for v in variants)}")
    if not flags:
        return variants[-1]
    for v in variants:
        if set(v.get("cpu_flags") or ()) <= flags:
            return v
    return variants[-1]      # the baseline's own load check then names what this CPU lacks


def _variant_dir(p: Path, manifest: dict, verify: bool) -> Path:
    """A variant set (`edge-slim compile -t x86-64-multi`): its manifest lists the variants, best first, and the
    checksums of their manifests (each of which checks its own files); -> the directory of the one to load."""
    from ..targets import cpu_flags
    variants = manifest.get("variants")
    if manifest.get("schema") != SCHEMA_VERSION or not isinstance(variants, list) or not variants or not all(
            isinstance(v, dict) and isinstance(v.get("dir"), str) and isinstance(v.get("target"), str)
            and v["dir"] not in ("", ".", "..") and "/" not in v["dir"] and "\\" not in v["dir"] for v in variants):
        raise ModelError(f"{p / MANIFEST}: a variant set needs schema {SCHEMA_VERSION} and a list of variants "
                         "(dir, target, cpu_flags); the artifact is damaged or from another tool")
    v = pick_variant(variants, cpu_flags(), os.environ.get(VARIANT_ENV) or None)
    sub = Bundle(p, {"model_file": f"{v['dir']}/{MANIFEST}", "files": manifest.get("files") or {}})
    if verify:
        verify_bundle(sub)                     # the chosen variant's manifest, against the set's checksum
    return p / v["dir"]


def verify_bundle(b: Bundle) -> None:
    """Check every listed file's size and sha256; refuse files that escape the bundle."""
    files = b.manifest["files"]
    if b.manifest["model_file"] not in files:
        raise ModelError(f"{b.path}: the model file {b.manifest['model_file']} has no checksum in the manifest")
    root = b.path.resolve()
    for name, meta in files.items():
        f = (b.path / name).resolve()
        if root not in f.parents:
            raise ModelError(f"{b.path}: manifest names a file outside the bundle: {name}")
        if not f.is_file():
            raise ModelError(f"{b.path}: {name} is missing; the bundle is incomplete")
        if f.stat().st_size != meta.get("bytes", f.stat().st_size) or sha256_file(f) != meta.get("sha256"):
            raise ModelError(f"{b.path}: checksum mismatch for {name}; the file was modified or damaged - "
                             "restore or re-export the bundle")


def write_manifest(directory: Path, manifest: dict) -> dict:
    """Fill in `files` with the size and sha256 of every file in `directory` and write manifest.json."""
    files = {}
    for f in sorted(directory.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            files[f.relative_to(directory).as_posix()] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    manifest = {**manifest, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


@contextlib.contextmanager
def staging_dir(dest: Path):
    """Yield a temporary directory beside `dest`; on success it replaces `dest` atomically."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a bundle is as readable as any directory
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
