"""From run files to pass@k reports and comparisons (tables as text, objects as dicts)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from led_local.errors import LedError
from led_local.eval.passk import paired_compare, summarize
from led_local.eval.runfile import read_records

DEFAULT_KS = (1, 2, 4, 8, 16)


class Run:
    """A run file grouped by problem: per-sample correctness and extracted answers, in sample
    order. Problems without a gold answer cannot be scored and are counted apart."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        records = read_records(self.path)
        if not records:
            raise LedError(f"run file has no records: {self.path}")
        by_problem: dict[str, list[dict]] = defaultdict(list)
        for r in records:
            by_problem[r["problem_id"]].append(r)
        self.correct: dict[str, list[bool]] = {}
        self.answers: dict[str, list[str | None]] = {}
        self.golds: dict[str, str | None] = {}
        self.ungraded: list[str] = []
        self.skipped = sum(r.get("finish_reason") == "skipped" for r in records)
        for pid, recs in by_problem.items():
            recs.sort(key=lambda r: r["sample"])
            golds = {r.get("gold") for r in recs}
            if len(golds) > 1:
                raise LedError(f"{self.path}: problem {pid!r} has records with different gold "
                               f"answers ({', '.join(sorted(map(repr, golds)))[:120]})")
            self.golds[pid] = recs[0].get("gold")
            if any(r.get("correct") is None for r in recs):
                self.ungraded.append(pid)
                continue
            self.correct[pid] = [bool(r["correct"]) for r in recs]
            self.answers[pid] = [r.get("answer") for r in recs]
        if not self.correct:
            raise LedError(f"no problem in {self.path} has a gold answer to score against")
        first = records[0]
        self.label = f"{first.get('method', '?')} ({self.path.name})"
        self.max_samples = max(len(v) for v in self.correct.values())

    def check_ks(self, ks: list[int]) -> None:
        for k in ks:
            if k > self.max_samples:
                raise LedError(f"`k` {k} is above the {self.max_samples} samples per problem "
                               f"in {self.path}")


def parse_ks(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4], each >= 1, sorted and unique."""
    try:
        ks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise LedError(f"`k` must be a comma-separated list of integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise LedError(f"`k` values must be >= 1, got {text!r}")
    return ks


def default_ks(max_samples: int) -> list[int]:
    return [k for k in DEFAULT_KS if k <= max_samples] or [1]


def passk_report(run: Run, ks: list[int], *, equivalent=None) -> dict:
    """summarize() of a run plus its bookkeeping (ungraded problems)."""
    run.check_ks(ks)
    out = summarize(run.correct, ks=ks, answers=run.answers, equivalent=equivalent)
    out["ungraded_problems"] = len(run.ungraded)
    out["skipped_samples"] = run.skipped
    return out


def format_passk(report: dict, ks: list[int]) -> str:
    """A small text table of a passk report (fractions shown as percentages)."""
    lines = [f"problems {report['n_problems']}, samples/problem {report['samples_per_problem']}"]

    def pct(v, se=None) -> str:
        if v is None:
            return "n/a"
        return f"{100 * v:6.2f}%" + (f" ± {100 * se:.2f}" if se is not None else "")

    acc = pct(report["mean_accuracy"], report["mean_accuracy_se"])
    lines.append(f"mean accuracy (pass@1)  {acc}")
    for k in ks:
        skipped = report["skipped"].get(k) or []
        note = f"   ({len(skipped)} problems with < {k} samples left out)" if skipped else ""
        value = pct(report[f"pass@{k}"], report[f"pass@{k}_se"])
        lines.append(f"pass@{k:<3}                 {value}{note}")
    if "maj@n" in report:
        lines.append(f"maj@n                   {pct(report['maj@n'], report.get('maj@n_se'))}")
    if report.get("skipped_samples"):
        lines.append(f"({report['skipped_samples']} samples skipped: prompt too long for the "
                     "context; counted wrong)")
    if report.get("ungraded_problems"):
        lines.append(f"({report['ungraded_problems']} problems without a gold answer not scored)")
    return "\n".join(lines)


def compare_report(a: Run, b: Run, ks: list[int], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """paired_compare() of two runs; refused when a shared problem has different golds."""
    for run in (a, b):
        run.check_ks(ks)
    for pid in sorted(set(a.golds) & set(b.golds)):
        if a.golds[pid] != b.golds[pid]:
            raise LedError(f"problem {pid!r} has gold {a.golds[pid]!r} in {a.path} but "
                           f"{b.golds[pid]!r} in {b.path}: the runs are of different problems")
    out = paired_compare(a.correct, b.correct, ks=ks, n_boot=n_boot, seed=seed)
    out["a"], out["b"] = a.label, b.label
    return out


def format_compare(report: dict, ks: list[int]) -> str:
    lines = [f"A = {report['a']}", f"B = {report['b']}",
             f"paired over {report['n_common']} problems "
             f"(only in A: {report['n_only_a']}, only in B: {report['n_only_b']}); "
             f"{int(100 * report['ci'])}% bootstrap CI over problems",
             f"{'':8}{'A':>9}{'B':>9}{'B - A':>9}   CI"]
    for k in ks:
        row = report["per_k"].get(k)
        if row is None or row["pass@k_a"] is None:
            lines.append(f"pass@{k:<3} n/a (no problem has {k} samples in both runs)")
            continue
        lines.append(f"pass@{k:<3}{100 * row['pass@k_a']:8.2f}%{100 * row['pass@k_b']:8.2f}%"
                     f"{100 * row['diff']:+8.2f}   [{100 * row['ci_low']:+.2f}, "
                     f"{100 * row['ci_high']:+.2f}]")
    return "\n".join(lines)


def curves(runs: list[Run], ks: list[int]) -> dict[str, dict[int, float]]:
    """pass@k curves for plotting, one per run."""
    return {r.label: {k: summarize(r.correct, ks=[k])[f"pass@{k}"] for k in ks} for r in runs}
