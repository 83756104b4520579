"""RepExp reports over run files: ``passk --select repexp`` and ``compare --select repexp``.

A run recorded with ``solve --embed`` holds, per problem, a pool of N answers with their
features. For each problem RepExp's selection (``select``) is scored exactly over the N
uniform first picks and set beside random selection without replacement; the problem-level
difference in samples-to-correct gets a percentile bootstrap interval, so the report can say
when there is no evidence of a difference.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from led_local.decoding.methods import seed_sequence
from led_local.errors import LedError
from led_local.eval.passk import _bootstrap_ci, pass_at_k
from led_local.eval.runfile import read_records
from led_local.eval.select import (
    DEFAULT_DIM,
    DEFAULT_LAMBDA,
    check_params,
    decode_embedding,
    evaluate_pool,
)

N_BOOT = 2000
CI = 0.95


class Pools:
    """A run file's graded problems, each as (features (N, d) float32, correct (N,) bool)
    in sample order; problems with an ungraded answer are counted in ``ungraded``.

    A problem whose prompt did not fit the context has only ``skipped`` records: no answer,
    no feature, all wrong (as ``passk`` counts them). Its pool has no correct answer, so the
    selection cannot matter and its features (zeros) are never read; it is counted in
    ``skipped``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        records = read_records(self.path)
        if not records:
            raise LedError(f"run file has no records: {self.path}")
        answered = [r for r in records if r.get("finish_reason") != "skipped"]
        if any("embedding" not in r for r in answered):
            raise LedError(f"{self.path} has answers without embeddings; record them with "
                           "`led-local solve `embed`` (a new run file, or `force`)")
        dims = {int(r["embedding_dim"]) for r in answered}
        if len(dims) > 1:
            raise LedError(f"{self.path} mixes embedding sizes {sorted(dims)}")
        dim = dims.pop() if dims else 1
        by_problem: dict[str, list[dict]] = defaultdict(list)
        for r in records:
            by_problem[str(r["problem_id"])].append(r)
        self.pools: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.ungraded = 0
        self.skipped = 0
        for pid, recs in by_problem.items():
            recs.sort(key=lambda r: int(r["sample"]))
            if any(r.get("correct") is None for r in recs):
                self.ungraded += 1
                continue
            n_skipped = sum(r.get("finish_reason") == "skipped" for r in recs)
            if n_skipped == len(recs):
                self.skipped += 1
                feats = np.zeros((len(recs), dim), np.float32)
            elif n_skipped:
                raise LedError(f"{self.path}: problem {pid!r} mixes skipped and answered "
                               "samples")
            else:
                feats = np.stack([decode_embedding(r["embedding"], int(r["embedding_dim"]))
                                  for r in recs])
            self.pools[pid] = (feats, np.array([bool(r["correct"]) for r in recs]))
        if not self.pools:
            raise LedError(f"no problem in {self.path} has a gold answer to score against")
        self.label = f"{records[0].get('method', '?')} ({self.path.name})"
        self.max_samples = max(len(c) for _, c in self.pools.values())


def evaluate_run(pools: Pools, *, dim: int = DEFAULT_DIM, lam: float = DEFAULT_LAMBDA,
                 seed: int = 0) -> dict[str, dict]:
    """{problem_id: evaluate_pool(...)} with one projection per problem, drawn from
    (seed, problem id) alone."""
    check_params(dim=dim, lam=lam)
    return {pid: evaluate_pool(feats, correct, dim=dim, lam=lam,
                               rng=np.random.default_rng(seed_sequence(seed, "repexp", pid)))
            for pid, (feats, correct) in sorted(pools.pools.items())}


def _interval(diffs: np.ndarray, seed: int) -> tuple[float, float]:
    return _bootstrap_ci(diffs, n_boot=N_BOOT, ci=CI, rng=np.random.default_rng(seed))


def verdict(lo: float, hi: float, *, lower_is_better: bool) -> str:
    """What a B - A interval says: "no evidence of a difference" when it holds 0."""
    if lo <= 0 <= hi:
        return "no evidence of a difference"
    better = hi < 0 if lower_is_better else lo > 0
    return "RepExp better than random" if better else "RepExp worse than random"


def passk_repexp(pools: Pools, *, dim: int = DEFAULT_DIM, lam: float = DEFAULT_LAMBDA,
                 seed: int = 0, ks: list[int] | None = None) -> dict:
    """The ``passk --select repexp`` object: means over problems of pass@k (random subset
    and RepExp's first k; k over problems with N >= k) and samples-to-correct, and the
    paired B - A = RepExp - random difference with its bootstrap interval."""
    per = evaluate_run(pools, dim=dim, lam=lam, seed=seed)
    ks = ks or list(range(1, pools.max_samples + 1))
    if ks[-1] > pools.max_samples:
        raise LedError(f"`k` {ks[-1]} is above the {pools.max_samples} samples per problem "
                       f"in {pools.path}")
    rows = []
    for k in ks:
        has = [p for p in per.values() if p["n"] >= k]
        rand = np.array([pass_at_k(p["n"], p["c"], k) for p in has])
        rep = np.array([p["pass_at_k_repexp"][k - 1] for p in has])
        lo, hi = _interval(rep - rand, seed)
        rows.append((float(rand.mean()), float(rep.mean()), lo, hi, len(has)))
    stc_rand = np.array([p["samples_to_correct_random"] for p in per.values()])
    stc_rep = np.array([p["samples_to_correct_repexp"] for p in per.values()])
    lo, hi = _interval(stc_rep - stc_rand, seed)
    ns = [p["n"] for p in per.values()]
    return {
        "select": "repexp", "dim": dim, "lambda": lam, "seed": seed,
        "n_problems": len(per),
        "samples_per_problem": ns[0] if min(ns) == max(ns) else {"min": min(ns), "max": max(ns)},
        "n_no_correct": sum(p["c"] == 0 for p in per.values()),
        "n_all_correct": sum(p["c"] == p["n"] for p in per.values()),
        "ungraded_problems": pools.ungraded,
        "skipped_problems": pools.skipped,
        "ks": ks,
        "pass_at_k_random": [r[0] for r in rows],
        "pass_at_k_repexp": [r[1] for r in rows],
        "pass_at_k_diff_ci": [[r[2], r[3]] for r in rows],
        "pass_at_k_n_problems": [r[4] for r in rows],
        "samples_to_correct_random": float(stc_rand.mean()),
        "samples_to_correct_repexp": float(stc_rep.mean()),
        "samples_to_correct_diff": float((stc_rep - stc_rand).mean()),
        "samples_to_correct_diff_ci": [lo, hi],
        "ci": CI, "n_boot": N_BOOT,
        "verdict": verdict(lo, hi, lower_is_better=True),
        "problems": {pid: {"n": p["n"], "c": p["c"],
                           "samples_to_correct_random": p["samples_to_correct_random"],
                           "samples_to_correct_repexp": p["samples_to_correct_repexp"]}
                     for pid, p in per.items()},
    }


def display_ks(n: int) -> list[int]:
    """The k rows a text table shows by default: powers of two up to n, and n."""
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if k < n]
    return ks + [n]


def format_passk_repexp(rep: dict, show: list[int]) -> str:
    """A text table of ``passk_repexp`` for the ks in ``show`` (percentages)."""
    lines = [f"problems {rep['n_problems']}, samples/problem {rep['samples_per_problem']}, "
             f"no correct answer {rep['n_no_correct']}, all correct {rep['n_all_correct']}",
             f"RepExp selection: dim {rep['dim'] or 'none'}, lambda {rep['lambda']}, "
             f"seed {rep['seed']}; exact average over all first picks",
             f"{'':9}{'random':>9}{'RepExp':>9}{'diff':>9}   {int(100 * rep['ci'])}% CI"]
    for k in show:
        i = rep["ks"].index(k)
        lo, hi = rep["pass_at_k_diff_ci"][i]
        a, b = rep["pass_at_k_random"][i], rep["pass_at_k_repexp"][i]
        lines.append(f"pass@{k:<4}{100 * a:8.2f}%{100 * b:8.2f}%{100 * (b - a):+8.2f}   "
                     f"[{100 * lo:+.2f}, {100 * hi:+.2f}]")
    lo, hi = rep["samples_to_correct_diff_ci"]
    lines.append(f"samples to correct  random {rep['samples_to_correct_random']:.3f}  RepExp "
                 f"{rep['samples_to_correct_repexp']:.3f}  diff "
                 f"{rep['samples_to_correct_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    lines.append(f"RepExp - random in samples to correct: {rep['verdict']}")
    if rep.get("ungraded_problems"):
        lines.append(f"({rep['ungraded_problems']} problems without a gold answer not scored)")
    if rep.get("skipped_problems"):
        lines.append(f"({rep['skipped_problems']} problems skipped, prompt too long for the "
                     "context: no correct answer)")
    return "\n".join(lines)


def compare_repexp(a: Pools, b: Pools, *, dim: int = DEFAULT_DIM, lam: float = DEFAULT_LAMBDA,
                   seed: int = 0, ks: list[int] | None = None) -> dict:
    """Run B against run A, both under RepExp selection, paired over their common problems:
    per k the mean pass@k of RepExp's first k in each (problems with N >= k in both) and
    B - A with its bootstrap interval; the same for samples-to-correct; and both runs'
    random-subset pass@k, for the plot."""
    pa = evaluate_run(a, dim=dim, lam=lam, seed=seed)
    pb = evaluate_run(b, dim=dim, lam=lam, seed=seed)
    common = sorted(set(pa) & set(pb))
    if not common:
        raise LedError(f"{a.path} and {b.path} have no problem in common")
    top = min(max(pa[p]["n"] for p in common), max(pb[p]["n"] for p in common))
    ks = ks or list(range(1, top + 1))
    out: dict = {"a": a.label, "b": b.label, "select": "repexp", "dim": dim, "lambda": lam,
                 "seed": seed, "n_common": len(common), "n_only_a": len(set(pa) - set(pb)),
                 "n_only_b": len(set(pb) - set(pa)), "ci": CI, "n_boot": N_BOOT, "ks": ks,
                 "per_k": {}}
    for k in ks:
        both = [p for p in common if pa[p]["n"] >= k and pb[p]["n"] >= k]
        if not both:
            raise LedError(f"`k` {k}: no common problem has {k} samples in both runs")
        ra = np.array([pa[p]["pass_at_k_repexp"][k - 1] for p in both])
        rb = np.array([pb[p]["pass_at_k_repexp"][k - 1] for p in both])
        lo, hi = _interval(rb - ra, seed)
        out["per_k"][k] = {
            "n_problems": len(both), "pass@k_a": float(ra.mean()), "pass@k_b": float(rb.mean()),
            "diff": float((rb - ra).mean()), "ci_low": lo, "ci_high": hi,
            "random_a": float(np.mean([pass_at_k(pa[p]["n"], pa[p]["c"], k) for p in both])),
            "random_b": float(np.mean([pass_at_k(pb[p]["n"], pb[p]["c"], k) for p in both]))}
    sa = np.array([pa[p]["samples_to_correct_repexp"] for p in common])
    sb = np.array([pb[p]["samples_to_correct_repexp"] for p in common])
    lo, hi = _interval(sb - sa, seed)
    out.update({"samples_to_correct_a": float(sa.mean()), "samples_to_correct_b": float(sb.mean()),
                "samples_to_correct_diff": float((sb - sa).mean()),
                "samples_to_correct_diff_ci": [lo, hi],
                "verdict": "no evidence of a difference" if lo <= 0 <= hi else
                ("B needs fewer samples" if hi < 0 else "B needs more samples")})
    return out


def format_compare_repexp(rep: dict, show: list[int]) -> str:
    """A text table of ``compare_repexp`` for the ks in ``show``."""
    lines = [f"A = {rep['a']}", f"B = {rep['b']}",
             f"RepExp selection (dim {rep['dim'] or 'none'}, lambda {rep['lambda']}, seed "
             f"{rep['seed']}) in both, paired over {rep['n_common']} problems (only in A: "
             f"{rep['n_only_a']}, only in B: {rep['n_only_b']}); "
             f"{int(100 * rep['ci'])}% bootstrap CI over problems",
             f"{'':9}{'A':>9}{'B':>9}{'B - A':>9}   CI"]
    for k in show:
        row = rep["per_k"][k]
        lines.append(f"pass@{k:<4}{100 * row['pass@k_a']:8.2f}%{100 * row['pass@k_b']:8.2f}%"
                     f"{100 * row['diff']:+8.2f}   [{100 * row['ci_low']:+.2f}, "
                     f"{100 * row['ci_high']:+.2f}]")
    lo, hi = rep["samples_to_correct_diff_ci"]
    lines.append(f"samples to correct  A {rep['samples_to_correct_a']:.3f}  B "
                 f"{rep['samples_to_correct_b']:.3f}  B - A {rep['samples_to_correct_diff']:+.3f}"
                 f" [{lo:+.3f}, {hi:+.3f}]: {rep['verdict']}")
    return "\n".join(lines)


def compare_curves(rep: dict, show: list[int]) -> dict[str, dict[int, float]]:
    """pass@k against k for the plot: random and RepExp selection of runs A and B."""
    rows = rep["per_k"]
    return {f"A random: {rep['a']}": {k: rows[k]["random_a"] for k in show},
            f"A RepExp: {rep['a']}": {k: rows[k]["pass@k_a"] for k in show},
            f"B random: {rep['b']}": {k: rows[k]["random_b"] for k in show},
            f"B RepExp: {rep['b']}": {k: rows[k]["pass@k_b"] for k in show}}
