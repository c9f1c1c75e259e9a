"""The HTML reports render in a real browser (headless Chromium) with every figure loaded, and are
well-formed HTML.

Needs Debian's `chromium` (apt-get install -y chromium); the browser tests are skipped without it.
"""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from dataset_files import TINY
from PIL import Image

from reslab.cli import main

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"
)


# Injected into a copy of the page: after load, record how many images decoded, on <body>.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.filter((img) => img.complete && img.naturalWidth > 0);
  document.body.setAttribute("data-images-loaded", ok.length + "/" + images.length);
});
</script>"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("render") / "degradation"
    assert main(["reproduce", "degradation", *TINY, "--iterations", "2", "--depths", "8", "--out", str(out)]) == 0
    return out


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def console_problems(stderr: str) -> list[str]:
    """Console errors and failed loads; Chromium's own noise (no D-Bus in a container) is ignored."""
    return [
        line
        for line in stderr.splitlines()
        if ("CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)) or "net::ERR_" in line
    ]


@needs_chromium
def test_report_renders_with_its_figures(experiment: Path, tmp_path: Path) -> None:
    page = experiment / "report.html"
    shot = tmp_path / "report.png"
    result = chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # text, tables and plots, not a blank page
    assert console_problems(result.stderr) == []

    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "\n</body>"))
    result = chromium(tmp_path / "profile", "--dump-dom", "--virtual-time-budget=5000", probe.as_uri())
    assert 'data-images-loaded="2/2"' in result.stdout, result.stderr[-2000:]  # Fig. 6 and Fig. 1 styles
    assert "Does it reproduce?" in result.stdout and "SYNTHETIC DATA" in result.stdout
    assert console_problems(result.stderr) == []


VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source", "wbr"}


class TagBalance(HTMLParser):
    """Checks that every non-void element is closed, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()


@pytest.mark.parametrize("page", ["report.html", "runs/plain_cifar_8-seed0/report.html"])
def test_reports_are_well_formed_self_contained_html(experiment: Path, page: str) -> None:
    text = (experiment / page).read_text()
    checker = TagBalance()
    checker.feed(text)
    checker.close()
    assert checker.doctype and checker.problems == [] and checker.stack == []
    assert '<html lang="en">' in text and '<meta charset="utf-8">' in text and "<title>" in text
    assert 'src="data:image/png;base64,' in text and "<script" not in text
    assert 'src="http' not in text and 'href="http' not in text  # nothing fetched from elsewhere
