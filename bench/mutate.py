"""Mutation testing of led-local's pure decoding maths: do the fast tests notice a wrong
operator, a wrong constant, a swapped argmax?

Each mutant changes one node of one module's syntax tree (an arithmetic or comparison
operator, ``and``/``or``, a unary minus or ``not``, a number, a boolean, a ``"left"``/``"right"``
string, ``argmax``/``argmin``, ``max``/``min``). The mutated module is written into a copy of
the package in a scratch directory, and the module's fast tests (``TARGETS``) run there with
``pytest -x``; a mutant that no test fails on *survives*. Docstrings, type hints, error
messages and ``__all__`` are never mutated. Runs are one at a time (the machine is shared).

    .venv/bin/python bench/mutate.py                    # every target
    .venv/bin/python bench/mutate.py --module samplers  # one module
    .venv/bin/python bench/mutate.py --list             # the mutants, without running them

The report lists each survivor as ``path:line: original -> mutant``; ``--json FILE`` writes
them all. A survivor is either a gap in the tests or an equivalent mutant (the same
behaviour: say why in the issue's note).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# module (relative to the repository) -> the fast tests that cover it
TARGETS = {
    "led_local/decoding/samplers.py": ["tests/test_samplers.py"],
    "led_local/decoding/filters.py": ["tests/test_filters.py", "tests/test_hapo.py",
                                      "tests/test_swir.py"],
    "led_local/decoding/dola.py": ["tests/test_dola.py", "tests/test_method_units.py"],
    "led_local/decoding/hapo.py": ["tests/test_hapo.py", "tests/test_method_units.py"],
    "led_local/decoding/swir.py": ["tests/test_swir.py", "tests/test_method_units.py"],
    "led_local/eval/select.py": ["tests/test_select.py", "tests/test_repexp.py"],
}
BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
          ast.FloorDiv: ast.Div, ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv}
CMPOPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
          ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn,
          ast.NotIn: ast.In}
NAMES = {"argmax": "argmin", "argmin": "argmax", "max": "min", "min": "max",
         "maximum": "minimum", "minimum": "maximum"}
STRINGS = {"left": "right", "right": "left", "vllm": "hf", "hf": "vllm"}
# one core per test run (numpy's BLAS would spin on every core of a shared machine)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


@dataclass
class Mutant:
    path: str
    index: int  # the mutation point's position in the walk of the module
    line: int
    what: str
    status: str = "pending"  # killed, survived, timeout, error


def _skipped(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations, raise/assert messages, __all__."""
    skip: set[int] = set()

    def all_of(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                all_of(body[0])
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            all_of(node.returns)
            for a in (*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs):
                all_of(a.annotation)
        if isinstance(node, ast.AnnAssign):
            all_of(node.annotation)
        if isinstance(node, ast.Raise | ast.Assert):
            all_of(node)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                for t in node.targets):
            all_of(node)
        if isinstance(node, ast.JoinedStr):
            all_of(node)
    return skip


def _points(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    """(node, description) of every mutation point, in walk order."""
    skip = _skipped(tree)
    out: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
            out.append((node, f"{type(node.op).__name__} -> {BINOPS[type(node.op)].__name__}"))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 \
                and type(node.ops[0]) in CMPOPS:
            op = type(node.ops[0])
            out.append((node, f"{op.__name__} -> {CMPOPS[op].__name__}"))
        elif isinstance(node, ast.BoolOp):
            out.append((node, "and <-> or"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
            out.append((node, f"drop {type(node.op).__name__}"))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            out.append((node, f"{node.value!r} -> {_constant(node.value)!r}"))
        elif isinstance(node, ast.Constant) and node.value in STRINGS:
            out.append((node, f"{node.value!r} -> {STRINGS[node.value]!r}"))
        elif isinstance(node, ast.Attribute) and node.attr in NAMES:
            out.append((node, f".{node.attr} -> .{NAMES[node.attr]}"))
        elif isinstance(node, ast.Name) and node.id in ("max", "min") \
                and isinstance(node.ctx, ast.Load):
            out.append((node, f"{node.id} -> {NAMES[node.id]}"))
    return out


def _constant(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    return v * 2 if v != 0 else 1.0


def _mutate(node: ast.AST) -> None:
    """Change ``node`` in place to its mutant."""
    if isinstance(node, ast.BinOp):
        node.op = BINOPS[type(node.op)]()
    elif isinstance(node, ast.Compare):
        node.ops = [CMPOPS[type(node.ops[0])]()]
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, ast.UnaryOp):  # -x -> +x (``not`` is dropped by the caller)
        node.op = ast.UAdd()
    elif isinstance(node, ast.Constant):
        node.value = STRINGS[node.value] if isinstance(node.value, str) \
            else _constant(node.value)
    elif isinstance(node, ast.Attribute):
        node.attr = NAMES[node.attr]
    elif isinstance(node, ast.Name):
        node.id = NAMES[node.id]


def mutants(path: str) -> list[Mutant]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return [Mutant(path, i, getattr(n, "lineno", 0), what)
            for i, (n, what) in enumerate(_points(tree))]


def mutated_source(m: Mutant) -> str:
    tree = ast.parse((ROOT / m.path).read_text(encoding="utf-8"))
    node, _ = _points(tree)[m.index]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        # `not x` -> `x`: replace the node by its operand in its parent
        for parent in ast.walk(tree):
            for field, value in ast.iter_fields(parent):
                if value is node:
                    setattr(parent, field, node.operand)
                elif isinstance(value, list) and any(v is node for v in value):
                    setattr(parent, field, [node.operand if v is node else v for v in value])
    else:
        _mutate(node)
    return ast.unparse(ast.fix_missing_locations(tree))


def run(m: Mutant, scratch: Path, *, timeout: float) -> str:
    """Write ``m`` into the scratch copy, run its tests there, restore the module."""
    target = scratch / m.path
    original = target.read_text(encoding="utf-8")
    target.write_text(mutated_source(m), encoding="utf-8")
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                            "-m", "not slow", *TARGETS[m.path]], cwd=scratch, env=ENV,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    finally:
        target.write_text(original, encoding="utf-8")
    if r.returncode == 0:
        return "survived"
    return "killed" if r.returncode == 1 else "error"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", action="append", help="only these modules (stem, e.g. hapo)")
    ap.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant run")
    ap.add_argument("--json", type=Path, help="write every mutant and its status here")
    args = ap.parse_args()
    paths = [p for p in TARGETS if not args.module or Path(p).stem in args.module]
    todo = [m for p in paths for m in mutants(p)]
    if args.list:
        for m in todo:
            print(f"{m.path}:{m.line}: {m.what}")
        print(f"{len(todo)} mutants", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="led-mutate-") as tmp:
        scratch = Path(tmp)
        shutil.copytree(ROOT / "led_local", scratch / "led_local",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for folder in ("tests", "docs"):
            shutil.copytree(ROOT / folder, scratch / folder,
                            ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, scratch / name)
        for p in paths:  # the unmutated tests must pass first
            ok = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                                 "no:cacheprovider", "-m", "not slow", *TARGETS[p]],
                                cwd=scratch, env=ENV, capture_output=True, text=True)
            if ok.returncode != 0:
                sys.exit(f"the tests of {p} fail unmutated:\n{ok.stdout[-2000:]}")
        start = time.monotonic()
        for i, m in enumerate(todo, 1):
            m.status = run(m, scratch, timeout=args.timeout)
            print(f"[{i}/{len(todo)} {time.monotonic() - start:6.0f}s] {m.status:8} "
                  f"{m.path}:{m.line}: {m.what}", file=sys.stderr, flush=True)
    survivors = [m for m in todo if m.status == "survived"]
    counts = {s: sum(m.status == s for m in todo) for s in ("killed", "timeout", "error",
                                                            "survived")}
    print(f"{len(todo)} mutants: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for m in survivors:
        print(f"survived {m.path}:{m.line}: {m.what}")
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for m in todo], indent=1) + "\n")


if __name__ == "__main__":
    main()
