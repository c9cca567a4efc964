"""The course in a real browser: JupyterLab in Chromium runs each notebook and its playground is exercised.

    python tests/browser/check_notebooks.py [--only 00,01] [--out runs/browser] [--timeout 900]
    python tests/browser/check_notebooks.py --site site/     # the static edition instead (index + one page)

For the notebooks, a JupyterLab server is started from this environment on 127.0.0.1 (a free port, a random
token, and throwaway config, settings, workspace and runtime folders; autosave off) over a copy of
``notebooks/``, so no notebook file of the repository is ever rewritten. Chromium (Debian's ``/usr/bin/chromium``,
driven by Playwright; no browser is downloaded) opens each notebook, runs all cells in quick mode and checks:

* no cell ended in an error;
* every widget rendered (none shows "Error displaying widget") and every plotly figure drew its SVG;
* each playground answers: the first slider is moved, the first dropdown set to another entry, the first button
  pressed, and the time until its output changes is measured (at most 1 s for a slider or a dropdown, which
  select among precomputed results; a button may train, so it gets longer).

It writes a screenshot and a JSON report per notebook under ``--out`` and a summary ``report.json``, and exits
non-zero if any check failed. The server is stopped by its process id, its kernels first, whatever happens.
With ``--site`` it opens the built static edition from disk instead, refuses every request that would leave the
machine, and checks that the index links every notebook and that a notebook page draws its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SELECTOR_LIMIT_MS = 1000  # a slider or dropdown over precomputed results must answer within this
BUTTON_LIMIT_MS = 300_000

# Runs in the page: starts watching every element of `roots`; window.__efflabChange resolves with the
# milliseconds until the first change in any of them (-1 when nothing changed within `limit`).
WATCH_CHANGE = """
([roots, limit]) => {
  window.__efflabChange = new Promise((resolve) => {
    const start = performance.now();
    const observer = new MutationObserver(() => { observer.disconnect(); resolve(performance.now() - start); });
    for (const root of roots) {
      observer.observe(root, {childList: true, subtree: true, characterData: true, attributes: true});
    }
    setTimeout(() => { observer.disconnect(); resolve(-1); }, limit);
  });
}
"""
# What counts as a control's answer: the figure or table it redraws, the status sentence above it (a setting past
# the precomputed ones changes only that sentence) and, for a button, its progress bar. The controls themselves
# are left out, since a slider's own read-out changes whenever it moves.
ANSWER_SELECTOR = ".widget-output, .widget-html, .widget-progress"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def missing_chromium_message() -> str:
    return (
        f"Chromium is needed at {CHROMIUM}: install Debian's package with `apt-get update && apt-get install -y "
        "chromium` (as root), then run this again"
    )


class LabServer:
    """A throwaway JupyterLab over a copy of the notebooks; ``stop()`` ends its kernels, then the process."""

    def __init__(self, notebooks: list[Path], *, mode: str = "quick"):
        self.home = Path(tempfile.mkdtemp(prefix="efflab-browser-"))
        self.root = self.home / "notebooks"
        self.root.mkdir()
        for notebook in notebooks:
            shutil.copy(notebook, self.root / notebook.name)
        settings = self.home / "settings" / "@jupyterlab" / "docmanager-extension"
        settings.mkdir(parents=True)
        (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
        notices = self.home / "settings" / "@jupyterlab" / "apputils-extension"
        notices.mkdir(parents=True)
        (notices / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
        self.port, self.token = free_port(), secrets.token_hex(16)
        environment = {
            **os.environ,
            "EFFLAB_MODE": mode,
            "JUPYTER_CONFIG_DIR": str(self.home / "config"),
            "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(self.home / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.home / "workspaces"),
        }
        command = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.expose_app_in_browser=True",
            "--allow-root",
            "--ServerApp.open_browser=False",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        self.log = open(self.home / "server.log", "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, env=environment, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_until_up()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(
            f"{self.base}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def _wait_until_up(self, limit: float = 120) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited at start; see {self.home / 'server.log'}")
            try:
                self.api("/api/status")
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer within {limit:.0f} s; see {self.home / 'server.log'}")

    def stop(self) -> None:
        try:
            for kernel in self.api("/api/kernels") or []:
                self.api(f"/api/kernels/{kernel['id']}", method="DELETE")
        except OSError:
            pass  # the server is already gone; its process is still ended below
        finally:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.log.close()
            shutil.rmtree(self.home, ignore_errors=True)


def run_notebook_in_lab(page, server: LabServer, name: str, out: Path, timeout_s: float) -> dict:
    """Open ``name``, run all cells, check outputs and widgets, exercise the playground; return the report."""
    report: dict = {"notebook": name, "problems": [], "controls": []}
    start = time.monotonic()
    page.goto(f"{server.base}/lab/tree/{name}?token={server.token}&reset", wait_until="domcontentloaded")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget", timeout=120_000)
    page.wait_for_function(
        """() => { const w = window.jupyterapp.shell.currentWidget;
                   return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel
                       && w.sessionContext.session.kernel.status === 'idle'; }""",
        timeout=180_000,
    )
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_timeout(1000)
    page.wait_for_function(
        """() => { const w = window.jupyterapp.shell.currentWidget;
                   const busy = w.sessionContext.session.kernel.status !== 'idle';
                   const pending = [...document.querySelectorAll('.jp-InputPrompt')]
                       .some((p) => p.textContent.includes('*'));
                   return !busy && !pending; }""",
        timeout=timeout_s * 1000,
        polling=1000,
    )
    report["run_seconds"] = round(time.monotonic() - start, 1)
    page.wait_for_timeout(1500)  # let the last figures and widgets draw

    errors = page.evaluate(
        """() => window.jupyterapp.shell.currentWidget.content.model.toJSON().cells
                 .flatMap((cell, index) => (cell.outputs || [])
                     .filter((o) => o.output_type === 'error')
                     .map((o) => `cell ${index}: ${o.ename}: ${o.evalue}`))"""
    )
    report["problems"] += errors
    counts = page.evaluate(
        """() => ({
            widgets: document.querySelectorAll('.jp-OutputArea-output .jupyter-widgets').length,
            widget_errors: [...document.querySelectorAll('.jp-OutputArea-output')]
                .filter((o) => o.textContent.includes('Error displaying widget')).length,
            figures: document.querySelectorAll('.js-plotly-plot').length,
            figures_drawn: [...document.querySelectorAll('.js-plotly-plot')]
                .filter((f) => f.querySelector('.main-svg')).length,
            plotly_outputs: window.jupyterapp.shell.currentWidget.content.model.toJSON().cells
                .flatMap((c) => c.outputs || [])
                .filter((o) => o.data && o.data['application/vnd.plotly.v1+json']).length,
        })"""
    )
    report.update(counts)
    if counts["widget_errors"]:
        report["problems"].append(f"{counts['widget_errors']} output(s) show 'Error displaying widget'")
    if counts["figures_drawn"] < counts["figures"] or counts["figures"] < counts["plotly_outputs"]:
        report["problems"].append(
            f"{counts['figures_drawn']} of {counts['figures']} figures drew "
            f"({counts['plotly_outputs']} plotly outputs)"
        )
    report["controls"] = exercise_controls(page, out, Path(name).stem)
    for control in report["controls"]:
        limit = BUTTON_LIMIT_MS if control["kind"] == "button" else SELECTOR_LIMIT_MS
        if control["ms"] < 0 or control["ms"] > limit:
            report["problems"].append(f"{control['kind']} {control['label']!r} did not answer within {limit} ms")
    page.screenshot(path=str(out / f"{Path(name).stem}.png"), full_page=True)
    report["seconds"] = round(time.monotonic() - start, 1)
    report["ok"] = not report["problems"]
    return report


def exercise_controls(page, out: Path, stem: str) -> list[dict]:
    """Move the first slider, change the first dropdown and press the first button of every widget area; keep a
    screenshot of each area as it ends."""
    results = []
    areas = page.locator(".jp-OutputArea-output:has(.jupyter-widgets)")
    for index in range(areas.count()):
        area = areas.nth(index)
        area.scroll_into_view_if_needed()
        slider = area.locator(".noUi-handle").first
        if slider.count():
            results.append(measure(page, area, "slider", _label(slider), lambda s=slider: _nudge(s)))
        dropdown = area.locator(".widget-dropdown select").first
        if dropdown.count():
            options = dropdown.locator("option").all_inner_texts()
            current = dropdown.input_value()
            values = dropdown.locator("option").evaluate_all("(os) => os.map((o) => o.value)")
            other = next((v for v in values if v != current), None)
            if other is not None:
                results.append(
                    measure(
                        page, area, "dropdown", f"{options[0]}...", lambda d=dropdown, o=other: d.select_option(o)
                    )
                )
        button = area.locator("button.jupyter-button:not([disabled])").first
        if button.count():
            results.append(measure(page, area, "button", button.inner_text(), button.click, BUTTON_LIMIT_MS))
        area.screenshot(path=str(out / f"{stem}_widgets_{index + 1}.png"))
    return results


def _label(handle) -> str:
    return handle.evaluate(
        "(h) => { const w = h.closest('.widget-slider, .jupyter-widgets');"
        " const l = w && w.querySelector('.widget-label'); return l ? l.textContent : 'slider'; }"
    )


def _nudge(handle) -> None:
    """One step right, or one step left for a slider that a cell already moved to its end."""
    at_end = handle.evaluate("(h) => h.getAttribute('aria-valuenow') === h.getAttribute('aria-valuemax')")
    handle.focus()
    handle.press("ArrowLeft" if at_end else "ArrowRight")


def measure(page, area, kind: str, label: str, act, limit_ms: int = 10_000) -> dict:
    """Milliseconds from the action until the area's first visible answer (-1: none); see ANSWER_SELECTOR."""
    answers = area.locator(ANSWER_SELECTOR)
    roots = [answers.nth(i).element_handle() for i in range(answers.count())] or [area.element_handle()]
    page.evaluate(WATCH_CHANGE, [roots, limit_ms])
    act()
    milliseconds = page.evaluate("() => window.__efflabChange")
    return {"kind": kind, "label": label.strip()[:60], "ms": round(milliseconds, 1)}


def check_site(browser, site: Path, out: Path) -> dict:
    """Open the static edition from disk: every notebook linked from the index, figures drawn, nothing fetched."""
    report: dict = {"site": str(site), "problems": [], "external_requests": []}
    context = browser.new_context()

    def refuse(route):
        report["external_requests"].append(route.request.url)
        route.abort()

    context.route(lambda url: not url.startswith(("file://", "data:", "blob:", "about:")), refuse)
    page = context.new_page()
    index = site / "index.html"
    page.goto(index.as_uri())
    links = page.locator("a[href$='.html']").evaluate_all("(as) => as.map((a) => a.getAttribute('href'))")
    report["notebook_links"] = links
    missing = [link for link in links if not (site / link).exists()]
    if not links or missing:
        report["problems"].append(f"index links {len(links)} pages; missing: {missing}")
    pages_with_figures = [link for link in links if not link.startswith("00")] or links
    if pages_with_figures:
        page.goto((site / pages_with_figures[0]).as_uri())
        page.wait_for_timeout(3000)
        drawn = page.evaluate(
            "() => { const figures = [...document.querySelectorAll('.js-plotly-plot')];"
            " return [figures.length, figures.filter((f) => f.querySelector('.main-svg')).length]; }"
        )
        report["page"], (report["figures"], report["figures_drawn"]) = pages_with_figures[0], drawn
        if drawn[0] == 0 or drawn[1] < drawn[0]:
            report["problems"].append(f"{drawn[1]} of {drawn[0]} figures drew on {pages_with_figures[0]}")
        page.screenshot(path=str(out / "site_page.png"), full_page=False)
    if report["external_requests"]:
        report["problems"].append(f"{len(report['external_requests'])} request(s) tried to leave the machine")
    report["ok"] = not report["problems"]
    context.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="comma-separated notebook prefixes, e.g. 00,01")
    parser.add_argument("--out", default=str(REPO / "runs" / "browser"), help="folder for screenshots and reports")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one notebook may take to run all")
    parser.add_argument("--site", default=None, help="check the built static edition in this folder instead")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(missing_chromium_message(), file=sys.stderr)
        return 2
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("Playwright is missing: make test-browser installs it (pip install playwright)", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            if args.site:
                reports = [check_site(browser, Path(args.site).resolve(), out)]
            else:
                reports = check_lab(browser, args.only, out, args.timeout)
        finally:
            browser.close()
    (out / "report.json").write_text(json.dumps(reports, indent=2) + "\n")
    for report in reports:
        print(summary_line(report))
    return 0 if all(report["ok"] for report in reports) else 1


def check_lab(browser, only: str | None, out: Path, timeout_s: float) -> list[dict]:
    notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        prefixes = [p.strip() for p in only.split(",") if p.strip()]
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(p) for p in prefixes)]
        if not notebooks:
            raise SystemExit(f"--only {only!r} matches no notebook")
    server = LabServer(notebooks)
    reports = []
    try:
        for notebook in notebooks:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                report = run_notebook_in_lab(page, server, notebook.name, out, timeout_s)
            except Exception as error:  # a timeout or a page that never loaded: report it, go on with the next
                report = {"notebook": notebook.name, "ok": False, "problems": [f"{type(error).__name__}: {error}"]}
                page.screenshot(path=str(out / f"{notebook.stem}.png"), full_page=True)
            finally:
                page.close()
                for kernel in server.api("/api/kernels") or []:
                    server.api(f"/api/kernels/{kernel['id']}", method="DELETE")
            (out / f"{notebook.stem}.json").write_text(json.dumps(report, indent=2) + "\n")
            print(summary_line(report), flush=True)
            reports.append(report)
    finally:
        server.stop()
    return reports


def summary_line(report: dict) -> str:
    name = report.get("notebook") or report.get("site")
    status = "ok" if report["ok"] else "FAILED: " + "; ".join(report["problems"])
    if "controls" in report:
        slowest = max((c["ms"] for c in report["controls"] if c["kind"] != "button"), default=None)
        extra = (
            f"{report.get('widgets', 0)} widgets, {report.get('figures_drawn', 0)}/{report.get('figures', 0)} "
            f"figures, {len(report['controls'])} controls (slowest selector {slowest} ms), "
            f"{report.get('seconds')} s"
        )
        return f"{name}: {status} | {extra}"
    return f"{name}: {status}"


if __name__ == "__main__":
    sys.exit(main())
