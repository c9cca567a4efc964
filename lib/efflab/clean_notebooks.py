"""Keep notebooks clean in git: no outputs, no execution counts, no per-machine metadata.

    python -m efflab.clean_notebooks notebooks/*.ipynb          # strip in place
    python -m efflab.clean_notebooks --check notebooks/*.ipynb  # exit 1 if any would change

Outputs go stale and bloat diffs; a reader runs the notebook to see them. The ``parameters`` tag, the kernelspec
and cell ids are kept, since papermill and JupyterLab rely on them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

KEPT_NOTEBOOK_METADATA = ("kernelspec", "language_info")
KEPT_CELL_METADATA = ("tags",)


def clean(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip outputs, execution counts and metadata other than kernelspec/language_info and cell tags."""
    notebook.metadata = {k: v for k, v in notebook.metadata.items() if k in KEPT_NOTEBOOK_METADATA}
    for cell in notebook.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEPT_CELL_METADATA}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return notebook


def is_clean(notebook: nbformat.NotebookNode) -> bool:
    before = nbformat.writes(notebook)
    return nbformat.writes(clean(nbformat.reads(before, as_version=4))) == before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m efflab.clean_notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only report notebooks that are not clean")
    args = parser.parse_args(argv)
    dirty = []
    for path in args.paths:
        notebook = nbformat.read(path, as_version=4)
        if is_clean(notebook):
            continue
        dirty.append(path)
        if not args.check:
            nbformat.write(clean(notebook), path)
    verb = "not clean" if args.check else "cleaned"
    for path in dirty:
        print(f"{verb}: {path}")
    return 1 if (args.check and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
