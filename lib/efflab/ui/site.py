"""The static edition of the course: every notebook executed, as HTML pages that open offline in any browser.

    python -m efflab.ui.site [--executed runs/site] [--out site] [--execute] [--only 00,05]

The pages are the executed notebooks (``efflab.run_notebooks`` writes them; ``--execute`` runs quick mode first
when none are there), converted with nbconvert's lab template. Three changes make them self-contained:

* **Figures stay interactive.** A plotly figure is stored as JSON for JupyterLab, which a static page cannot draw;
  each becomes a ``<div>`` drawn by plotly.js, which is copied once into the site folder from the installed
  plotly package, so nothing is loaded from the internet.
* **Widgets are shown in their initial state**, with a note that they need a running kernel: a playground's
  controls as a line of their values, and what its output area showed when the notebook ran (read from the
  widget state that the executor stores in the notebook).
* **No external scripts.** nbconvert's template would fetch MathJax, RequireJS and Mermaid from a CDN; those tags
  are left out (equations show as their LaTeX source; this course draws no Mermaid diagrams).

The index is the notebook map: number, title, paper, and whether a committed full-mode result exists.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
from pathlib import Path

import nbformat
import plotly
import plotly.io as pio
from nbconvert import HTMLExporter
from nbconvert.filters.markdown import markdown2html

from efflab.cache import REPO_ROOT
from efflab.results import COMMITTED_RESULTS

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
EXTERNAL_TAG = re.compile(r"<(script|link)\b[^>]*\b(src|href)=\"(https?:)?//[^\"]*\"[^>]*>(\s*</script>)?", re.I)
WIDGET_NOTE = (
    "Interactive controls: they answer in JupyterLab with a running kernel (<code>make lab</code>). "
    "Shown here as they were when the notebook ran."
)


def figure_html(figure_json: dict) -> str:
    """A plotly figure as a div drawn by the page's plotly.js (not bundled again per figure)."""
    return pio.to_html(figure_json, include_plotlyjs=False, full_html=False, config={"displaylogo": False})


def output_html(data: dict) -> str:
    """The richest static rendering of one output's mime bundle."""
    if PLOTLY_MIME in data:
        return figure_html(data[PLOTLY_MIME])
    if "text/html" in data:
        return "".join(data["text/html"])
    if "image/png" in data:
        return f'<img src="data:image/png;base64,{data["image/png"]}">'
    if "text/markdown" in data:
        return markdown2html("".join(data["text/markdown"]))
    return f"<pre>{html.escape(''.join(data.get('text/plain', '')))}</pre>"


def widget_html(model_id: str, state: dict) -> str:
    """A widget tree in its initial state: its controls' values in one line, then its output areas."""
    controls, outputs, seen = [], [], set()

    def visit(identifier: str) -> None:
        if identifier in seen or identifier not in state:
            return
        seen.add(identifier)
        model = state[identifier]["state"]
        name = model.get("_model_name", "")
        if name == "OutputModel":
            outputs.extend(output_html(o.get("data", {})) for o in model.get("outputs", []) if "data" in o)
        elif name == "HTMLModel" and model.get("value"):
            outputs.append(model["value"])
        elif "description" in model and ("value" in model or "index" in model):
            labels = model.get("_options_labels")
            value = labels[model["index"]] if labels and model.get("index") is not None else model.get("value")
            if name != "ButtonModel":
                controls.append(f"<b>{html.escape(str(model['description']))}</b> {html.escape(str(value))}")
        for child in model.get("children", []):
            visit(str(child).removeprefix("IPY_MODEL_"))

    visit(model_id)
    line = " &middot; ".join(controls)
    return (
        f'<div class="efflab-widget"><p class="efflab-note">{WIDGET_NOTE}</p>'
        f"{f'<p>{line}</p>' if line else ''}{''.join(outputs)}</div>"
    )


def make_static(notebook) -> None:
    """Replace every plotly and widget output of an executed notebook by its static HTML, in place."""
    state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if not data:
                continue
            if WIDGET_MIME in data:
                output["data"] = {"text/html": widget_html(data[WIDGET_MIME]["model_id"], state)}
            elif PLOTLY_MIME in data:
                output["data"] = {"text/html": figure_html(data[PLOTLY_MIME])}
    notebook.metadata.pop("widgets", None)


def page_html(notebook) -> str:
    exporter = HTMLExporter(
        template_name="lab",
        mathjax_url="",
        require_js_url="",
        jquery_url="",
        mermaid_js_url="",
        mermaid_layout_elk_js_url="",
    )
    body, _ = exporter.from_notebook_node(notebook)
    body = EXTERNAL_TAG.sub("", body)
    style = "<style>.efflab-widget{border-left:3px solid #1f77b4;padding-left:8px}.efflab-note{color:#555}</style>"
    return body.replace("<head>", f'<head>\n<script src="plotly.min.js"></script>\n{style}', 1)


def title_and_paper(notebook) -> tuple[str, str]:
    first = next((c.source for c in notebook.cells if c.cell_type == "markdown"), "")
    title = next((line.lstrip("# ").strip() for line in first.splitlines() if line.startswith("#")), "notebook")
    paper = re.search(r"arXiv[: ]*(\d{4}\.\d{4,5})", first)
    return title, (f"arXiv {paper.group(1)}" if paper else "")


def index_html(rows: list[dict]) -> str:
    lines = [
        "<!doctype html><html><head><meta charset='utf-8'><title>efflab: the course</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}td,th{padding:4px 10px}</style>",
        "</head><body><h1>efflab: an executable course on efficient deep learning</h1>",
        "<p>The notebooks as they ran in quick mode. Figures are interactive; widgets need JupyterLab.</p>",
        "<table><tr><th>#</th><th>notebook</th><th>paper</th><th>full-mode result committed</th></tr>",
    ]
    for row in rows:
        lines.append(
            f"<tr><td>{row['number']}</td><td><a href='{row['page']}'>{html.escape(row['title'])}</a></td>"
            f"<td>{row['paper']}</td><td>{'yes' if row['committed'] else 'no'}</td></tr>"
        )
    lines.append("</table></body></html>")
    return "\n".join(lines) + "\n"


def build_site(executed: Path, out: Path) -> list[Path]:
    """Write ``out/index.html``, one page per executed notebook and plotly.js; return the pages written."""
    notebooks = sorted(executed.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise ValueError(
            f"executed={executed} holds no executed notebooks; run python -m efflab.run_notebooks first "
            "(or pass --execute)"
        )
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", out / "plotly.min.js")
    rows, pages = [], []
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        title, paper = title_and_paper(notebook)
        make_static(notebook)
        page = out / f"{path.stem}.html"
        page.write_text(page_html(notebook))
        pages.append(page)
        committed = any(COMMITTED_RESULTS.glob(f"{path.stem}*.json"))
        rows.append(dict(number=path.stem[:2], title=title, paper=paper, page=page.name, committed=committed))
    (out / "index.html").write_text(index_html(rows))
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m efflab.ui.site", description=__doc__.split("\n\n")[0])
    parser.add_argument("--executed", default=str(REPO_ROOT / "runs" / "site"), help="executed notebooks")
    parser.add_argument("--out", default=str(REPO_ROOT / "site"), help="folder for the site")
    parser.add_argument("--execute", action="store_true", help="run the notebooks in quick mode first")
    parser.add_argument("--only", default=None, help="with --execute: comma-separated prefixes, e.g. 00,05")
    args = parser.parse_args(argv)
    executed = Path(args.executed)
    if args.execute:
        from efflab import run_notebooks

        only = ["--only", args.only] if args.only else []
        if run_notebooks.main(["--mode", "quick", "--out", str(executed), "--no-units", *only]) != 0:
            raise SystemExit(f"a notebook failed while executing for the site; see {executed / 'report.md'}")
    pages = build_site(executed, Path(args.out))
    print(json.dumps({"index": str(Path(args.out) / "index.html"), "pages": len(pages)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
