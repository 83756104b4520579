"""The repository stands alone and its package layers point down only."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "led_local"
# A layer may import its own and lower layers, never a higher one.
RANK = {"errors": 0, "data": 0, "llama": 1, "decoding": 2, "eval": 3, "serve": 3,
        "diagnostics": 3, "cli": 4}


def test_no_tracked_file_refers_outside_the_repository():
    needle = "../" + "shared"  # the development workspace beside the checkout
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    offenders = [f for f in files if f and (ROOT / f).is_file()
                 and needle.encode() in (ROOT / f).read_bytes()]
    assert offenders == []


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "led_local" else None


def test_imports_point_down_the_layers():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        src_layer = layer_of(".".join(rel.parts))
        if src_layer not in RANK:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                layer = layer_of(target)
                if layer in RANK and RANK[layer] > RANK[src_layer]:
                    wrong.append(f"{rel}: imports {target}")
    assert wrong == []


def test_every_module_is_in_a_layer():
    loose = sorted(p.name for p in PACKAGE.glob("*.py")
                   if p.stem not in RANK and p.name != "__init__.py")
    assert loose == []
