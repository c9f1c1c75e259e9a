"""Self-contained HTML report pages: tables, PNG figures as base64 data URIs, commands, versions.

A page is built top-down (`Page.heading`, `.banner`, `.table`, `.figure`, ...) and written with
`Page.write`; it needs no other file and no JavaScript, so it can be mailed or archived as is.
`Page.write` also writes the same page as Markdown (`report.md` beside `report.html`), whose
figures link to the PNG files next to it: the form to commit into a repository (docs/results/).
Links to other pages (`Page.link_list`) go to their .html from the HTML page and to their .md from
the Markdown page; `Page.write` refuses to write a page whose figures or linked pages are not there.
"""

from __future__ import annotations

import base64
import html
import os
import platform
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from reslab.atomic import atomic_write_bytes
from reslab.machine import cpu_model

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9rem; color: #444; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 0.85rem; white-space: pre-wrap; }
.banner { padding: 0.7rem 1rem; margin: 1rem 0; border-radius: 4px; border: 2px solid; }
.synthetic { background: #fde2e2; border-color: #c0392b; font-size: 1.1rem; font-weight: 700; }
.failed { background: #fff1d6; border-color: #d68910; }
.ok { background: #e3f5e6; border-color: #2e8b57; }
.note { background: #eef3fb; border-color: #5b7db1; }
.yes { color: #1e7b3c; font-weight: 600; } .no { color: #b03a2e; font-weight: 600; }
"""

SYNTHETIC_TEXT = (
    "SYNTHETIC DATA: these runs trained on made-up images (a smoke test of the pipeline). "
    "None of the numbers below says anything about residual networks or the paper."
)


class Page:
    """An HTML page assembled from small pieces; every piece of text is escaped."""

    def __init__(self, title: str, *, synthetic: bool = False) -> None:
        self.title = title
        self.parts: list[str] = []
        self.md: list[str] = []  # the same page as Markdown blocks
        self.figures: list[Path] = []  # PNG files the Markdown page links, beside the page
        self.pages: list[Path] = []  # other pages linked, as HTML paths relative to this page's folder
        if synthetic:
            self.banner("synthetic", SYNTHETIC_TEXT)

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append(f"{'#' * level} {text}")

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")
        self.md.append(_md_text(text))

    def bullets(self, items: list[str]) -> None:
        self.parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        self.md.append("\n".join(f"- {_md_text(i)}" for i in items))

    def banner(self, kind: str, text: str) -> None:
        """kind: synthetic | failed | ok | note."""
        self.parts.append(f'<div class="banner {kind}">{html.escape(text)}</div>')
        self.md.append(f"> **{kind.upper()}:** {_md_text(text)}")

    def table(
        self, header: list[str], rows: list[list[Any]], caption: str | None = None, id: str | None = None
    ) -> None:
        """Cells are text; a cell ("yes"/"no", text) tuple is coloured as a verdict."""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        ident = f' id="{html.escape(id)}"' if id else ""
        self.parts.append(f"<table{ident}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        lines = [f"**{_md_text(caption)}**", ""] if caption else []
        lines += ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        self.md.append("\n".join(lines))

    def figure(self, png: Path, caption: str) -> None:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(png.name)}: {html.escape(caption)}</figcaption></figure>"
        )
        self.md.append(f"![{_md_text(png.name)}]({_url(Path(png.name))})\n\n*{png.name}: {_md_text(caption)}*")
        self.figures.append(png)

    def code(self, lines: list[str]) -> None:
        self.parts.append("<pre>" + html.escape("\n".join(lines)) + "</pre>")
        self.md.append("```\n" + "\n".join(lines) + "\n```")

    def details(self, summary: str, text: str) -> None:
        """A collapsed block of preformatted text (e.g. a config file)."""
        self.parts.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>")
        self.md.append(f"<details><summary>{html.escape(summary)}</summary>\n\n```\n{text}\n```\n\n</details>")

    def link_list(self, links: list[tuple[Path, str]]) -> None:
        """[(page, text)]: links to other pages written by `Page.write`, each page given by the path
        of its .html relative to this page's folder. The Markdown page links their .md."""
        for page, _ in links:
            if page.is_absolute() or page.suffix != ".html":
                raise ValueError(f"link_list takes the relative path of a page's .html, got {page}")
        items = "".join(f'<li><a href="{html.escape(_url(p))}">{html.escape(t)}</a></li>' for p, t in links)
        self.parts.append(f"<ul>{items}</ul>")
        self.md.append("\n".join(f"- [{_md_text(t)}]({_url(p.with_suffix('.md'))})" for p, t in links))
        self.pages += [p for p, _ in links]

    def environment(self, training_env: Mapping[str, object] | None = None) -> None:
        """Software versions and hardware of this machine, and of the training runs if known."""
        self.heading("Software and hardware")
        rows = [[k, v] for k, v in environment().items()]
        self.table(["report made with", ""], rows)
        if training_env:
            self.table(
                ["training runs (first run's summary.json)", ""],
                [[k, str(v)] for k, v in training_env.items() if k != "command"],
            )

    def render(self) -> str:
        stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(self.title)}</h1>\n<p>Generated {html.escape(stamp)} by reslab.</p>\n"
            + "\n".join(self.parts)
            + "\n</body>\n</html>\n"
        )

    def render_markdown(self) -> str:
        stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        return f"# {self.title}\n\nGenerated {stamp} by reslab.\n\n" + "\n\n".join(self.md) + "\n"

    def write(self, path: Path) -> Path:
        """Write the HTML page to `path` and the Markdown page beside it (same name, .md). Every link
        must resolve from there: the figures lie beside the page, the linked pages exist (.html, .md)."""
        if path.suffix == ".md":
            raise ValueError(f"{path}: the Markdown page would overwrite the HTML page; name it NAME.html")
        folder = path.parent
        missing = [str(png) for png in self.figures if png.parent.resolve() != folder.resolve()]
        for page in self.pages:
            missing += [str(folder / f) for f in (page, page.with_suffix(".md")) if not (folder / f).is_file()]
        if missing:
            raise ValueError(f"{path} would link files that are not where it links them: {', '.join(missing)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        for target, text in ((path, self.render()), (path.with_suffix(".md"), self.render_markdown())):
            atomic_write_bytes(target, text.encode("utf-8"))
        return path


def _url(path: Path) -> str:
    """A relative path as a link target: / between parts, percent-encoded (a space breaks a Markdown link)."""
    return quote(path.as_posix())


def _cell(value: Any) -> str:
    if isinstance(value, tuple):
        verdict, text = value
        return f'<td class="{"yes" if verdict == "yes" else "no"}">{html.escape(str(text))}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _md_text(text: str) -> str:
    """Plain text safe inside a Markdown line: no HTML tags, no table breaks."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_cell(value: Any) -> str:
    if isinstance(value, tuple):
        verdict, text = value
        return f"**{_md_text(text)}**" if verdict == "yes" else f"*{_md_text(text)}*"
    return _md_text(value)


def environment() -> dict[str, str]:
    """Versions of the software that matters and the hardware, as strings."""
    import matplotlib
    import numpy
    import torch
    import torchvision

    from reslab import __version__
    from reslab.analysis.experiment import available_cores

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return {
        "reslab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "matplotlib": matplotlib.__version__,
        "os": platform.platform(),
        "cpu": cpu_model(),
        "cores": f"{available_cores()} usable of {os.cpu_count()}",
        "torch threads": str(torch.get_num_threads()),
        "gpu": gpu,
    }
