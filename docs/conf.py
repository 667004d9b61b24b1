"""Sphinx configuration: built-in extensions and the alabaster theme only (the docs extra is just sphinx).

Build: python -m sphinx -W -b html docs docs/_build/html
"""

import xbatch

project = "xbatch"
author = "the xbatch authors"
copyright = "2026, the xbatch authors"
release = xbatch.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "Fast packed LLM batches for JAX and grain", "fixed_sidebar": True}

# Google-style docstrings ("Args:", "Returns:", "Raises:", "Attributes:").
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
