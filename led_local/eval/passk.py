"""pass@k, majority vote and paired run comparisons over per-sample correctness.

Pure numpy over `{problem_id: [correct, ...]}` mappings; no I/O except `plot_pass_at_k`,
which writes one PNG. Randomness (the bootstrap) comes from an explicit seeded
`np.random.Generator`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from led_local.errors import LedError

__all__ = ["PassAtKError", "paired_compare", "pass_at_k", "plot_pass_at_k", "summarize"]


class PassAtKError(LedError):
    """Invalid input to a pass@k computation (counts out of range, empty results)."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `n` samples of which `c` are correct.

    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i) so that large
    n cannot overflow. Requires 0 <= c <= n and 1 <= k <= n.
    """
    if not 1 <= k <= n:
        raise PassAtKError(f"k must be in [1, n={n}], got k={k}")
    if not 0 <= c <= n:
        raise PassAtKError(f"c (correct samples) must be in [0, n={n}], got c={c}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def _counts(results: Mapping[str, Sequence[bool]], name: str) -> dict[str, tuple[int, int]]:
    """{problem_id: (n, c)}, checking every problem has >= 1 sample and only bool flags."""
    counts = {}
    for pid, flags in results.items():
        if len(flags) == 0:
            raise PassAtKError(f"{name}: problem {pid!r} has no samples")
        if any(f is None for f in flags):
            raise PassAtKError(f"{name}: problem {pid!r} has ungraded samples (None)")
        counts[pid] = (len(flags), sum(bool(f) for f in flags))
    return counts


def _check_ks(ks: Sequence[int]) -> list[int]:
    if len(ks) == 0 or any(int(k) != k or k < 1 for k in ks):
        raise PassAtKError(f"ks must be a non-empty list of integers >= 1, got {list(ks)!r}")
    return sorted({int(k) for k in ks})


def _mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean (None when undefined: < 1 or < 2 values)."""
    if len(values) == 0:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    se = float(arr.std(ddof=1) / np.sqrt(arr.size)) if arr.size > 1 else None
    return float(arr.mean()), se


VOTE_BUDGET_S = 10.0  # seconds of equivalence checks per problem in a majority vote
MAX_VOTE_CHARS = 200  # longer answers are grouped by their text alone


def _majority_correct(
    flags: Sequence[bool],
    answers: Sequence[str | None],
    equivalent: Callable[[str, str], bool],
    *,
    budget_s: float = VOTE_BUDGET_S,
) -> bool:
    """Whether the majority answer is correct; ties go to the group seen first.

    Answers are grouped by their whitespace-normalised text first; then each group is
    merged into the first earlier group that ``equivalent`` matches, comparing one answer
    per group, answers of at most MAX_VOTE_CHARS characters only, and only while the
    problem's ``budget_s`` lasts (after it, groups stay as their texts made them).
    """
    by_text: dict[str, list[int]] = {}  # insertion order = order of first appearance
    for i, answer in enumerate(answers):
        if answer is not None:
            by_text.setdefault(" ".join(answer.split()), []).append(i)
    if not by_text:
        return False
    deadline = time.monotonic() + budget_s
    reps: list[str] = []
    groups: list[list[int]] = []
    for text, members in by_text.items():
        target = None
        for g, rep in enumerate(reps):
            if time.monotonic() > deadline or len(text) > MAX_VOTE_CHARS:
                break
            if len(rep) <= MAX_VOTE_CHARS and equivalent(rep, text):
                target = g
                break
        if target is None:
            reps.append(text)
            groups.append(list(members))
        else:
            groups[target].extend(members)
    best = max(groups, key=len)  # max() keeps the first of equal-sized groups
    return bool(flags[min(best)])


def summarize(
    results: Mapping[str, Sequence[bool]],
    *,
    ks: Sequence[int],
    answers: Mapping[str, Sequence[str | None]] | None = None,
    equivalent: Callable[[str, str], bool] | None = None,
    vote_budget_s: float = VOTE_BUDGET_S,
) -> dict[str, Any]:
    """Aggregate per-sample correctness `{problem_id: [bool] * n}` over problems.

    Returns a dict with `n_problems`; `samples_per_problem` (an int if every problem has
    the same n, else {"min": .., "max": ..}); `mean_accuracy` (mean of c/n) and
    `mean_accuracy_se`; for each k in `ks`: `pass@k` (mean over the problems with n >= k;
    None when there is none), `pass@k_se` and `pass@k_n_problems`; `skipped` = {k: sorted
    ids of problems with n < k}. Standard errors are across problems, None below 2.
    With `answers` (same shape as `results`, None = no answer extracted) also `maj@n` and
    `maj@n_se`: per problem the most frequent answer, grouping answers with
    `equivalent(a, b)` (default: equal strings after strip) within `vote_budget_s` seconds
    per problem (see `_majority_correct`), ties to the group that appears first, correct if
    that group's first member is; no answer at all = wrong.
    """
    counts = _counts(results, "results")
    if not counts:
        raise PassAtKError("results is empty: no problems to summarize")
    ks = _check_ks(ks)
    ns = [n for n, _ in counts.values()]
    acc, acc_se = _mean_se([c / n for n, c in counts.values()])
    summary: dict[str, Any] = {
        "n_problems": len(counts),
        "samples_per_problem": ns[0] if min(ns) == max(ns) else {"min": min(ns), "max": max(ns)},
        "mean_accuracy": acc,
        "mean_accuracy_se": acc_se,
        "skipped": {},
    }
    for k in ks:
        values = [pass_at_k(n, c, k) for n, c in counts.values() if n >= k]
        summary[f"pass@{k}"], summary[f"pass@{k}_se"] = _mean_se(values)
        summary[f"pass@{k}_n_problems"] = len(values)
        summary["skipped"][k] = sorted(pid for pid, (n, _) in counts.items() if n < k)
    if answers is not None:
        if set(answers) != set(results):
            raise PassAtKError("answers must have the same problem ids as results")
        bad = [pid for pid in results if len(answers[pid]) != len(results[pid])]
        if bad:
            raise PassAtKError(f"answers and results differ in sample count for {bad[:5]!r}")
        same = equivalent if equivalent is not None else (lambda a, b: a == b)
        maj = [float(_majority_correct(results[p], answers[p], same, budget_s=vote_budget_s))
               for p in results]
        summary["maj@n"], summary["maj@n_se"] = _mean_se(maj)
    return summary


def _bootstrap_ci(
    diffs: np.ndarray, *, n_boot: int, ci: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile CI of mean(diffs) resampling problems; chunked to bound memory."""
    m = diffs.size
    means = np.empty(n_boot, dtype=np.float64)
    step = max(1, 4_000_000 // m)
    for start in range(0, n_boot, step):
        rows = min(step, n_boot - start)
        means[start : start + rows] = diffs[rng.integers(0, m, size=(rows, m))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(lo), float(hi)


def paired_compare(
    a: Mapping[str, Sequence[bool]],
    b: Mapping[str, Sequence[bool]],
    *,
    ks: Sequence[int],
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Compare run B against run A on the problems both contain.

    Returns {"n_common", "n_only_a", "n_only_b", "n_boot", "seed", "ci", "per_k"}, where
    per_k[k] = {"n_problems", "pass@k_a", "pass@k_b", "diff", "ci_low", "ci_high"} over the
    common problems in which both runs have >= k samples: diff is the mean of per-problem
    pass@k(B) - pass@k(A), [ci_low, ci_high] its percentile bootstrap interval at level
    `ci` (default 0.95) from `n_boot` (default 2000) resamples of problems with
    `np.random.default_rng(seed)` (default 0; reseeded per k). All None when no problem
    qualifies for a k.
    """
    if n_boot < 1:
        raise PassAtKError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < ci < 1:
        raise PassAtKError(f"ci must be in (0, 1), got {ci}")
    ks = _check_ks(ks)
    counts_a, counts_b = _counts(a, "run A"), _counts(b, "run B")
    common = sorted(set(counts_a) & set(counts_b))
    out: dict[str, Any] = {
        "n_common": len(common),
        "n_only_a": len(set(counts_a) - set(counts_b)),
        "n_only_b": len(set(counts_b) - set(counts_a)),
        "n_boot": n_boot,
        "seed": seed,
        "ci": ci,
        "per_k": {},
    }
    for k in ks:
        both = [p for p in common if counts_a[p][0] >= k and counts_b[p][0] >= k]
        row: dict[str, Any] = {"n_problems": len(both)}
        if not both:
            row.update({key: None for key in ("pass@k_a", "pass@k_b", "diff", "ci_low", "ci_high")})
        else:
            pa = np.array([pass_at_k(*counts_a[p], k) for p in both])
            pb = np.array([pass_at_k(*counts_b[p], k) for p in both])
            rng = np.random.default_rng(seed)
            lo, hi = _bootstrap_ci(pb - pa, n_boot=n_boot, ci=ci, rng=rng)
            row.update(
                {
                    "pass@k_a": float(pa.mean()),
                    "pass@k_b": float(pb.mean()),
                    "diff": float((pb - pa).mean()),
                    "ci_low": lo,
                    "ci_high": hi,
                }
            )
        out["per_k"][k] = row
    return out


def plot_pass_at_k(
    curves: Mapping[str, Mapping[int, float]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> None:
    """Write a PNG of pass@k against k (log2 x axis), one line per run.

    `curves` maps a run label to {k: pass@k}; None values (no problem with n >= k) are
    left out. Uses the Agg canvas directly, so matplotlib's global backend is untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise PassAtKError("curves is empty: nothing to plot")
    fig = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    all_ks: set[int] = set()
    top = 0.0
    for label, curve in curves.items():
        points = sorted((int(k), v) for k, v in curve.items() if v is not None)
        if any(k < 1 for k, _ in points):
            raise PassAtKError(f"curve {label!r}: k must be >= 1, got {[k for k, _ in points]}")
        all_ks.update(k for k, _ in points)
        top = max([top] + [v for _, v in points])
        ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    if all_ks:
        ax.set_xticks(sorted(all_ks), labels=[str(k) for k in sorted(all_ks)])
    ax.set_ylim(0.0, min(1.0, top * 1.15 + 0.02))  # small models: keep their curves readable
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title is not None:
        ax.set_title(title)
    try:
        fig.savefig(path, format="png", dpi=120)
    except OSError as exc:
        raise PassAtKError(f"cannot write the plot to {os.fspath(path)!r}: {exc}") from exc
