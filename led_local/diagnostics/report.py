"""``inspect``'s summary: means over the positions inside LED's scope, a verdict in plain words,
and the text printed for people."""

from __future__ import annotations

import numpy as np

from led_local.diagnostics.inspect import NORMS

# tv_emit against tv_temperature: below LITTLE, LED moves the emitted distribution less than
# half of what +0.1 temperature would; above MUCH, more than twice as far
LITTLE, MUCH = 0.5, 2.0


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def summarise(responses: list[dict], *, norm: str = "ln0") -> dict:
    """Means over in-scope positions of every response's steps, per norm setting, and the
    verdict for ``norm`` (the setting LED would run with: ln1 under ``--led-norm``)."""
    steps = [s for r in responses for s in r["steps"]]
    inside = [s for s in steps if s["in_scope"]]
    out: dict = {"positions": len(steps), "in_scope": len(inside)}
    if not inside:
        out["verdict"] = ("No position lies inside LED's thinking scope, so LED would emit "
                          "exactly what plain top-k sampling emits here.")
        return out
    final = np.array([s["entropy_final"] for s in inside])
    out.update(entropy_final=_mean(final), gate=_mean([s["gate"] for s in inside]),
               tv_temperature=_mean([s["tv_temperature"] for s in inside]))
    for key in NORMS:
        depth = np.array([s[key]["depth_entropy"] for s in inside])  # (positions, d-1)
        j_star = np.bincount([s[key]["j_star"] for s in inside], minlength=depth.shape[1] + 1)
        out[key] = {
            "depth_entropy": float(depth.mean()),
            "candidate_mass": _mean([np.mean(s[key]["candidate_mass"]) for s in inside]),
            "above_final": float(np.mean(depth.max(axis=1) > final)),
            "j_star": j_star.tolist(),
            "tv_explore": _mean([s[key]["tv_explore"] for s in inside]),
            "tv_emit": _mean([s[key]["tv_emit"] for s in inside]),
        }
    out["verdict"] = verdict(out, norm=norm)
    return out


def _tv(x: float) -> str:
    """A distance for people: three decimals, or two significant digits when smaller."""
    return f"{x:.3f}" if x == 0 or x >= 5e-4 else f"{x:.1e}"


def verdict(summary: dict, *, norm: str = "ln0") -> str:
    """One sentence or two on whether LED changes what this model writes."""
    other = "ln1" if norm == "ln0" else "ln0"
    emit, temp = summary[norm]["tv_emit"], summary["tv_temperature"]
    ratio = emit / temp if temp > 0 else float("inf") if emit > 0 else 0.0
    moved = (f"LED moves each step's token distribution by {_tv(emit)} on average (total "
             f"variation, {norm}; {_tv(summary[other]['tv_emit'])} with {other}), against "
             f"{_tv(temp)} for raising the temperature by 0.1")
    if ratio < LITTLE:
        head = f"LED barely changes what this model writes: {moved}; expect pass@k close to " \
               "plain sampling."
    elif ratio < MUCH:
        head = f"LED changes this model's choices about as much as a small temperature " \
               f"increase: {moved}."
    else:
        head = f"LED clearly changes this model's choices: {moved}; a pass@k comparison is " \
               "worth running."
    inner, last = summary[norm]["depth_entropy"], summary["entropy_final"]
    if inner > last:
        premise = (f"Its intermediate depths are less certain than its final layer ({inner:.2f} "
                   f"vs {last:.2f} nats), as LED assumes.")
    else:
        premise = (f"Its intermediate depths are more certain than its final layer "
                   f"({inner:.2f} vs {last:.2f} nats), the opposite of LED's premise.")
    return f"{head} {premise}"


def format_summary(summary: dict, *, model: str, depths: int) -> str:
    """The human summary ``inspect`` prints on stdout."""
    lines = [f"{model}: {summary['positions']} positions, {summary['in_scope']} inside LED's "
             "scope"]
    if summary["in_scope"]:
        lines += [
            f"  final layer entropy       {summary['entropy_final']:.3f} nats",
            f"  exploration gate 1-max(q) {summary['gate']:.3f}",
            f"  TV of +0.1 temperature    {summary['tv_temperature']:.4f}",
            f"  {'':26}{'ln0':>8} {'ln1':>8}",
        ]
        rows = (("depth entropy (nats)", "depth_entropy", ".3f"),
                ("mass on the k candidates", "candidate_mass", ".3f"),
                ("deeper > final (frac.)", "above_final", ".3f"),
                ("TV explore vs plain", "tv_explore", ".4f"),
                ("TV emitted vs plain", "tv_emit", ".4f"))
        for label, key, fmt in rows:
            lines.append(f"  {label:26}{summary['ln0'][key]:>8{fmt}} "
                         f"{summary['ln1'][key]:>8{fmt}}")
        lines.append(f"  (depth entropy: the mean over depths 1..{depths - 1})")
    lines.append(summary["verdict"])
    return "\n".join(lines)


def rounded(obj, digits: int = 6):
    """``obj`` with every float rounded to ``digits`` decimals, for compact JSON."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, digits) for v in obj]
    return obj
