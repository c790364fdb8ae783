"""Optional MetaSchedule tuning (`edge-slim compile --tune-trials N`), on top of the schedule rules.

The database is kept per model and target, under $EDGE_SLIM_CACHE/tuning (default
~/.cache/edge-slim/tuning) or `--tuning-dir`, named by the source graph's sha256 and the target
dict; a later compile of the same model for the same target applies it without tuning. Kernels
the database has no record for keep the rule schedules.

Three blockers of MetaSchedule on the project's machines, with the fixes used here
(shared/notes/tvm-facts.md): apache-tvm-ffi 0.1.15 segfaults (pin 0.1.14.post0); psutil,
cloudpickle and xgboost are needed; each builder worker imports tvm.s_tir.tensor_intrin (~40 s,
past the 30 s build timeout), so the builder here skips that import and has a longer timeout.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import types
from pathlib import Path

from ...errors import MissingDependencyError

DB_FILES = ("database_workload.json", "database_tuning_record.json")


def database_dir(job) -> Path:
    base = job.tuning_dir or Path(os.environ.get("EDGE_SLIM_CACHE", Path.home() / ".cache" / "edge-slim")) / "tuning"
    key = json.dumps(job.target.tvm_target(cuda_arch=job.cuda_arch), sort_keys=True)
    from ...runtime.bundle import sha256_file
    model = sha256_file(job.onnx_path)[:16]
    tgt = hashlib.sha256(key.encode()).hexdigest()[:8]
    return base / f"{model}-{job.target.name}-{tgt}"


def has_database(job) -> bool:
    d = database_dir(job)
    return all((d / f).is_file() and (d / f).stat().st_size > 0 for f in DB_FILES)


def apply_database(job, db: Path):
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms
    database = ms.database.JSONDatabase(str(db / DB_FILES[0]), str(db / DB_FILES[1]), module_equality="structural")
    with database:
        return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(job.mod)


def _check_deps() -> None:
    missing = [m for m in ("psutil", "cloudpickle", "xgboost") if _absent(m)]
    if missing:
        raise MissingDependencyError(f"--tune-trials needs {', '.join(missing)}: pip install psutil cloudpickle "
                                     "xgboost-cpu (all in: pip install 'edge-slim[tvm]')")


def _absent(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is None


def _build_no_intrin(mod, target, _params):
    """The default LocalBuilder build, minus the import of tvm.s_tir.tensor_intrin."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.compile(mod, target=target)


def _worker_init():
    sys.modules.setdefault("tvm.s_tir.tensor_intrin", types.ModuleType("tvm.s_tir.tensor_intrin"))


def tune(job, trials: int, db: Path) -> None:
    """Tune the fused module's kernels for `trials` trials in all, appending to database `db`."""
    _check_deps()
    _worker_init()
    from tvm.s_tir import meta_schedule as ms
    # builder workers are fresh processes that unpickle _build_no_intrin by reference
    pkg_root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join([pkg_root, *filter(None, [os.environ.get("PYTHONPATH")])])
    db.mkdir(parents=True, exist_ok=True)
    tasks = ms.relax_integration.extract_tasks(job.mod, job.tvm_target)
    tasks = [t for t in tasks if "take" not in t.task_name]  # the gather gets random out-of-bounds ids
    per_task = max(1, trials // max(1, len(tasks)))
    ms.relax_integration.tune_relax(
        mod=job.mod, params={}, target=job.tvm_target, work_dir=str(db),
        max_trials_global=trials, max_trials_per_task=max(per_task, 8), num_trials_per_iter=min(16, max(per_task, 8)),
        builder=ms.builder.LocalBuilder(f_build=_build_no_intrin, timeout_sec=120, initializer=_worker_init),
        runner=ms.runner.LocalRunner(timeout_sec=60),
        module_equality="structural")
