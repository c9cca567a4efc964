"""Figures, widgets and the static site: the only part of efflab that imports plotly or ipywidgets.

Plotly's notebook renderers import nbformat, which imports jsonschema, whose optional check of the "iri" string
format builds a parser for RFC 3987 on import when ``rfc3987_syntax`` is installed (JupyterLab's server installs
it): two to four seconds in every kernel, for a check that nothing in a course kernel performs. Marking that
module as absent before plotly loads makes jsonschema skip the check, as it does wherever the module is missing.
"""

import sys

sys.modules.setdefault("rfc3987_syntax", None)
