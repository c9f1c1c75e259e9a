"""Every link in the reports reslab writes resolves: each href/src of a report.html and each link or
image target of a report.md names a file that exists, relative to the page's folder.

The pages come from `reslab reproduce degradation` and `reslab reproduce layer-responses` on tiny
synthetic data and from `reslab report`. A Markdown page links to the .md of another page (the .md is
what gets committed to docs/results/), an HTML page to its .html.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from dataset_files import TINY

from reslab.analysis.report_page import Page
from reslab.cli import main

RUNS = ("plain_cifar_8-seed0", "resnet_cifar_8-seed0")


class LinkTargets(HTMLParser):
    """The targets of <a href>, <img src> and <link href>, in page order."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"a": "href", "link": "href", "img": "src"}.get(tag)
        self.targets += [value for name, value in attrs if name == wanted and value is not None]


def html_targets(page: Path) -> list[str]:
    parser = LinkTargets()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    return parser.targets


FENCE = re.compile(r"^```.*?^```", re.S | re.M)  # a code block: commands and config files, not links
MD_LINK = re.compile(r"!?\[[^\]]*\]\(([^)]*)\)")
MD_TARGET = re.compile(r"\s*(?:<([^>]*)>|(\S*))(?:\s+\"[^\"]*\")?\s*")  # target, then an optional "title"


def markdown_targets(page: Path) -> list[str]:
    """The targets of [text](target) links and ![alt](target) images outside code blocks; one that
    Markdown would not read as a link (a space in it) is returned as written, with its spaces."""
    targets = []
    for inside in MD_LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        match = MD_TARGET.fullmatch(inside)
        targets.append(next(t for t in match.groups() if t is not None) if match else inside)
    return targets


def local_path(target: str) -> str | None:
    """The file a target names, or None for one that is not a local file (web, mail, data, #anchor)."""
    parts = urlsplit(target)
    if parts.scheme in ("http", "https", "mailto", "data") or target.startswith("#"):
        return None
    assert not parts.scheme and not parts.netloc, f"{target!r} is not a relative link"
    return unquote(parts.path)


def broken_links(page: Path) -> list[str]:
    """Each link of the page that does not resolve, or links the other form of a page that has both."""
    markdown = page.suffix == ".md"
    problems = []
    for target in markdown_targets(page) if markdown else html_targets(page):
        path = local_path(target)
        if path is None:
            continue
        if markdown and re.search(r"\s", target):
            problems.append(f"{target!r}: not a Markdown link (a space in the target; write it as %20)")
            continue
        if not path or Path(path).is_absolute():
            problems.append(f"{target!r}: not a path relative to the page's folder")
            continue
        file = page.parent / path
        if not file.exists():
            problems.append(f"{target!r}: no such file {file}")
        wrong, right = (".html", ".md") if markdown else (".md", ".html")
        if file.suffix == wrong and file.with_suffix(right).exists():
            problems.append(f"{target!r}: links the {wrong} page where its {right} exists")
    return problems


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A tiny degradation experiment, its layer responses and two `reslab report` pages, in one folder."""
    root = tmp_path_factory.mktemp("links")
    degradation = root / "degradation"
    runs = degradation / "runs"
    commands = [
        ["reproduce", "degradation", *TINY, "--iterations", "2", "--depths", "8", "--out", str(degradation)],
        ["reproduce", "layer-responses", "--from", str(degradation), "--images", "32", "--out", str(root / "resp")],
        ["report", str(runs / RUNS[0]), "--out", str(root / "one" / "X.html")],
        ["report", *(str(runs / name) for name in RUNS), "--out", str(root / "compare runs.html")],
    ]
    for command in commands:
        assert main(command) == 0, command
    return root


def test_every_page_was_written(written: Path) -> None:
    pages = {p.relative_to(written).as_posix() for p in written.rglob("*.html")}
    expected = {"degradation/report.html", "resp/report.html", "one/X.html", "compare runs.html"}
    expected |= {f"degradation/runs/{name}/report.html" for name in RUNS}
    assert pages == expected
    assert all(Path(written / page).with_suffix(".md").is_file() for page in pages)


def test_every_link_resolves(written: Path) -> None:
    pages = sorted([*written.rglob("*.html"), *written.rglob("*.md")])
    problems = {str(p.relative_to(written)): broken_links(p) for p in pages}
    assert {page: found for page, found in problems.items() if found} == {}


def test_experiment_page_links_each_run_report(written: Path) -> None:
    """The links the test above checks are there: the experiment's pages name every run's report, each
    in its own form."""
    page = written / "degradation" / "report"
    for suffix, targets in ((".html", html_targets), (".md", markdown_targets)):
        links = targets(page.with_suffix(suffix))
        assert all(f"runs/{name}/report{suffix}" in links for name in RUNS), links
    figures = markdown_targets(written / "compare runs.md")
    assert figures == ["compare%20runs_error_curves.png"]  # a Markdown target has no spaces


def test_report_out_names_the_html_page(written: Path, tmp_path: Path, capsys) -> None:
    run = written / "degradation" / "runs" / RUNS[0]
    assert main(["report", str(run), "--out", str(tmp_path / "page.md")]) == 2  # the .md would overwrite it
    assert "name the HTML page" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_a_page_with_a_broken_link_is_not_written(tmp_path: Path) -> None:
    page = Page("links")
    page.link_list([(Path("runs/a/report.html"), "a")])
    with pytest.raises(ValueError, match="runs/a/report.html"):
        page.write(tmp_path / "report.html")
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "report.html").write_text("a")
    with pytest.raises(ValueError, match="runs/a/report.md"):  # the Markdown page links the .md
        page.write(tmp_path / "report.html")
    (tmp_path / "runs" / "a" / "report.md").write_text("a")
    page.write(tmp_path / "report.html")
    assert broken_links(tmp_path / "report.html") == broken_links(tmp_path / "report.md") == []
    with pytest.raises(ValueError, match="relative path"):
        page.link_list([(tmp_path / "runs" / "a" / "report.html", "absolute")])


def test_link_checker_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.html").write_text("<p>other</p>")
    (tmp_path / "other.md").write_text("other")
    (tmp_path / "fig.png").write_bytes(b"")
    (tmp_path / "p.html").write_text(
        '<a href="other.html#top">ok</a><img src="data:image/png;base64,AA"><a href="https://x.org">ok</a>'
        '<a href="#here">ok</a><a href="gone.html">broken</a><img src="fig%20x.png"><a href="other.md">md</a>'
    )
    (tmp_path / "p.md").write_text(
        "[a](other.md) ![f](fig.png) [w](http://x.org) [b](other.html) [c](missing.md) ![s](fig x.png)\n\n"
        "```\n[n](no.md)\n```\n"
    )
    assert broken_links(tmp_path / "p.html") == [
        f"'gone.html': no such file {tmp_path / 'gone.html'}",
        f"'fig%20x.png': no such file {tmp_path / 'fig x.png'}",
        "'other.md': links the .md page where its .html exists",
    ]
    assert broken_links(tmp_path / "p.md") == [
        "'other.html': links the .html page where its .md exists",
        f"'missing.md': no such file {tmp_path / 'missing.md'}",
        "'fig x.png': not a Markdown link (a space in the target; write it as %20)",
    ]


def test_committed_results_pages_link_only_what_is_committed() -> None:
    """docs/results/ holds copies of report.md pages: each link and figure they name is committed too."""
    pages = sorted((Path(__file__).resolve().parents[2] / "docs" / "results").rglob("*.md"))
    assert pages
    problems = {str(p): broken_links(p) for p in pages}
    assert {page: found for page, found in problems.items() if found} == {}
