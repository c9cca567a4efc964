"""The library's two import rules, read from the source: a paper package imports the core, never another paper
package; only plot modules and ``efflab.ui`` import plotly or ipywidgets (so every experiment runs headless)."""

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "lib" / "efflab"
PAPER_PACKAGES = sorted(
    p.name
    for p in LIBRARY.iterdir()
    if p.is_dir() and p.name not in {"data", "models", "ui"} and (p / "__init__.py").exists()
)
FRONT_END = ("plotly", "ipywidgets")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def library_files():
    return sorted(p for p in LIBRARY.rglob("*.py") if "__pycache__" not in p.parts)


def package_of(path: Path) -> str | None:
    parts = path.relative_to(LIBRARY).parts
    return parts[0] if len(parts) > 1 and parts[0] in PAPER_PACKAGES else None


def test_there_are_paper_packages():
    assert {"pruning", "shapley", "early_exit", "glimpse"} <= set(PAPER_PACKAGES)


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(LIBRARY)))
def test_paper_packages_import_only_the_core(path):
    own = package_of(path)
    for module in imported_modules(path):
        parts = module.split(".")
        if parts[0] != "efflab" or len(parts) < 2:
            continue
        other = parts[1]
        if other in PAPER_PACKAGES and other != own:
            where = f"paper package {own!r}" if own else "the core"
            pytest.fail(f"{path.relative_to(LIBRARY)} ({where}) imports {module}, another paper's package")


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(LIBRARY)))
def test_only_plot_modules_import_the_front_end(path):
    relative = path.relative_to(LIBRARY)
    allowed = relative.name == "plots.py" or relative.parts[0] == "ui"
    front_end = sorted(m for m in imported_modules(path) if m.split(".")[0] in FRONT_END)
    assert allowed or not front_end, f"{relative} imports {front_end}; only plots.py modules and ui/ may"


def test_the_rule_test_sees_a_violation(tmp_path):
    # the reader of imports must notice both kinds of import it polices
    sample = tmp_path / "sample.py"
    sample.write_text("import plotly.graph_objects as go\nfrom efflab.shapley.values import exact_shapley\n")
    assert {"plotly.graph_objects", "efflab.shapley.values"} <= imported_modules(sample)
