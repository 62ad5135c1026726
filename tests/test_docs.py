"""The README is the door and docs/ the house: the README stays short, every relative link and image
resolves (to a heading too, when it names one), the reference pages hold every `towerserve serve`
option, every RPC and the errors table, and the architecture picture is what docs/architecture.py
draws."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 250

# [text](target) and ![alt](target), the target up to whitespace or ")"; an optional "title" after.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")


def _links(page: Path) -> list[str]:
    """Relative link and image targets of a Markdown page, outside code blocks and code spans."""
    text = _CODE.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    targets = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http:, mailto:, ... and anchors within the page
        targets.append(target)
    return targets


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"


def test_the_pages_exist():
    names = {p.name for p in PAGES}
    for name in (
        "data.md",
        "models.md",
        "export.md",
        "api.md",
        "operations.md",
        "client.md",
        "scaling.md",
        "reliability.md",
        "benchmarks.md",
        "engine.md",
        "development.md",
        "glossary.md",
    ):
        assert name in names, f"docs/{name} is missing"


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / t.split("#")[0]).resolve() for t in _links(README)}
    missing = [p.name for p in PAGES[2:] if p.resolve() not in linked]
    assert missing == [], f"README.md does not link {missing}"


def _anchors(page: Path) -> set[str]:
    """GitHub's ids for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    titles = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", t.lower()).replace(" ", "-") for t in titles}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(page):
    broken = []
    text = _CODE.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    targets = _links(page) + [t for t in _LINK.findall(text) if t.startswith("#")]
    for target in targets:
        path, _, anchor = target.split("?", 1)[0].partition("#")
        dest = page.parent / path if path else page
        missing_heading = anchor and dest.suffix == ".md" and dest.exists() and anchor not in _anchors(dest)
        if not dest.exists() or missing_heading:
            broken.append(target)
    assert broken == [], f"{page.relative_to(ROOT)}: links to missing files or headings: {broken}"


def _serve_options() -> list[str]:
    from towerserve.clients.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    options = [
        max(a.option_strings, key=len) for a in serve._actions if a.option_strings and a.dest != "help"
    ]
    assert len(options) > 10, options
    return options


def test_every_serve_option_is_documented():
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = [o for o in _serve_options() if not re.search(rf"`{re.escape(o)}[ `=]", text)]
    assert missing == [], f"docs/operations.md lacks these `towerserve serve` options: {missing}"


def test_every_rpc_is_documented():
    rpcs = []
    for proto in sorted((ROOT / "proto" / "towerserve" / "v1").glob("*.proto")):
        rpcs += re.findall(r"^\s*rpc\s+(\w+)\s*\(", proto.read_text(encoding="utf-8"), re.M)
    assert len(rpcs) >= 7, rpcs
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = [r for r in rpcs if not re.search(rf"`(\w+\.)?{r}`", text)]
    assert missing == [], f"docs/api.md lacks these RPCs: {missing}"


def test_the_errors_table_is_the_code_table():
    from towerserve.server.engine.errors import error_table_markdown

    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert error_table_markdown() in text, "docs/api.md's Errors table differs from ERROR_TABLE"


def test_the_architecture_picture_is_generated_from_its_source(tmp_path):
    """docs/architecture.py draws the README's picture; the committed SVG is its output, byte for byte."""
    spec = importlib.util.spec_from_file_location("architecture", ROOT / "docs" / "architecture.py")
    architecture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(architecture)
    svg, png = architecture.draw(tmp_path / "architecture")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = svg.read_text(encoding="utf-8")
    for *_, label, _colour in architecture.BOXES:  # every box's text is in the picture, as text
        assert all(line.replace("&", "&amp;") in text for line in label.splitlines()), label
    committed = ROOT / "docs" / "architecture.svg"
    assert (ROOT / "docs" / "architecture.png").is_file()
    assert committed.read_text(encoding="utf-8") == text, (
        "docs/architecture.svg is stale: run `python docs/architecture.py`"
    )
