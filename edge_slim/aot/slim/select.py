"""Choosing a candidate: the Pareto frontier and the complexity objective (pure Python, no torch).

A candidate is a row with at least `size_mb` and `error` (lower is better for both) and, when latency
was measured, `latency_ms`. Figures are normalized over the table, min-max, so that the weights are
comparable whatever the units:

    x_norm = (x - min over candidates) / (max - min)        (0 when every candidate has the same x)
    complexity = alpha * size_norm + beta * error_norm + gamma * latency_norm

Rules (`choose`):
- constraints first: --max-size-mb and --max-latency-ms remove the candidates above them;
- with a constraint and no weights given, the most accurate feasible candidate wins (then the smaller);
- otherwise the lowest complexity among the feasible candidates (ties: lower error, then smaller size).
With positive weights the winner is always on the frontier.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ...errors import EdgeSlimError

KEYS = ("size_mb", "error", "latency_ms")


class NoFeasibleCandidate(EdgeSlimError):
    """No candidate meets the size / latency constraints."""
    exit_code = 5


@dataclass(frozen=True)
class Objective:
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 0.0
    max_size_mb: float | None = None
    max_latency_ms: float | None = None
    weights_given: bool = False      # the user set alpha/beta/gamma (with a constraint: weigh, don't just rank)

    def __post_init__(self):
        if min(self.alpha, self.beta, self.gamma) < 0 or self.alpha + self.beta + self.gamma <= 0:
            raise ValueError("alpha, beta and gamma must be >= 0 and not all 0")

    def to_dict(self) -> dict:
        return asdict(self)


def _axes(rows: list[dict]) -> tuple[str, ...]:
    """size and error always; latency when every row has it."""
    return KEYS if rows and all(r.get("latency_ms") is not None for r in rows) else KEYS[:2]


def dominates(a: dict, b: dict, axes: tuple[str, ...]) -> bool:
    return all(a[k] <= b[k] for k in axes) and any(a[k] < b[k] for k in axes)


def pareto(rows: list[dict], axes: tuple[str, ...] | None = None) -> list[int]:
    """Indices of the rows no other row dominates (lower is better on every axis)."""
    axes = axes or _axes(rows)
    return [i for i, r in enumerate(rows) if not any(dominates(o, r, axes) for j, o in enumerate(rows) if j != i)]


def normalized(rows: list[dict], key: str) -> list[float]:
    vals = [float(r[key]) for r in rows]
    lo, hi = min(vals), max(vals)
    return [0.0 if hi == lo else (v - lo) / (hi - lo) for v in vals]


def complexity(rows: list[dict], obj: Objective) -> list[float]:
    if obj.gamma and "latency_ms" not in _axes(rows):
        raise ValueError("gamma > 0 needs a measured latency for every candidate")
    s, e = normalized(rows, "size_mb"), normalized(rows, "error")
    lat = normalized(rows, "latency_ms") if obj.gamma else [0.0] * len(rows)
    return [obj.alpha * a + obj.beta * b + obj.gamma * c for a, b, c in zip(s, e, lat)]


def feasible(rows: list[dict], obj: Objective) -> list[int]:
    ok = []
    for i, r in enumerate(rows):
        if obj.max_size_mb is not None and r["size_mb"] > obj.max_size_mb:
            continue
        if obj.max_latency_ms is not None and (r.get("latency_ms") is None or r["latency_ms"] > obj.max_latency_ms):
            continue
        ok.append(i)
    return ok


def choose(rows: list[dict], obj: Objective) -> int:
    """Index of the chosen row (see the module docstring); NoFeasibleCandidate when none meets the constraints."""
    if not rows:
        raise NoFeasibleCandidate("no candidates were measured")
    ok = feasible(rows, obj)
    if not ok:
        lim = [f"{v} {u}" for v, u in ((obj.max_size_mb, "MB"), (obj.max_latency_ms, "ms p50")) if v is not None]
        best = min(rows, key=lambda r: r["size_mb"])
        raise NoFeasibleCandidate(f"no candidate meets {' and '.join(lim)} (smallest: {best['size_mb']:.2f} MB"
                                  f"{', %.2f ms' % best['latency_ms'] if best.get('latency_ms') is not None else ''}"
                                  "); try larger pruning ratios or int8; nothing written")
    constrained = obj.max_size_mb is not None or obj.max_latency_ms is not None
    if constrained and not obj.weights_given:
        return min(ok, key=lambda i: (rows[i]["error"], rows[i]["size_mb"]))
    c = complexity(rows, obj)
    return min(ok, key=lambda i: (c[i], rows[i]["error"], rows[i]["size_mb"]))
