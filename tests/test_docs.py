"""The documentation stays short where it must, connected, and in step with the command line:
README.md at most 200 lines, every relative link in README.md and docs/*.md reaching its file
(and heading), every option of every command written in docs/usage.md."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from led_local.cli import main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_is_at_most_200_lines():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines; move the detail into docs/"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: {target} does not exist"
        assert dest.is_relative_to(ROOT), f"{page.name}: {target} points outside the repository"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


def test_the_docs_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not link {page.name}"


def test_every_option_of_every_command_is_in_usage():
    # the decoding methods' options are in their generated table
    usage = (ROOT / "docs" / "usage.md").read_text() + (ROOT / "docs" / "options.md").read_text()
    written = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", usage))
    missing = []
    for name, command in [("", main), *sorted(main.commands.items())]:
        for param in command.params:
            if isinstance(param, click.Option):
                missing += [f"{name} {opt}".strip() for opt in param.opts + param.secondary_opts
                            if opt not in written]
        if name:
            assert f"led-local {name} " in usage, f"no usage line for {name}"
    assert not missing, f"options missing from docs/usage.md: {missing}"
