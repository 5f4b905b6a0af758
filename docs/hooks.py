"""mkdocs hooks: the notebooks link to ``../docs/NAME.md`` (right in JupyterLab and on GitHub);
on the site a notebook is the page ``notebooks/NN_name/``, so those links become ``../../NAME/``.
And the formulas' MathJax is copied into the site from an installed package, never read from a CDN."""

from __future__ import annotations

import re
import shutil
from importlib.resources import files
from pathlib import Path

_DOCS_LINK = re.compile(r'href="\.\./docs/([\w-]+)\.md(#[\w-]*)?"')


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    return _DOCS_LINK.sub(lambda m: f'href="../../{m.group(1)}/{m.group(2) or ""}"', html)


def on_post_build(config):
    """MathJax 2.7 (the ``jupyter-server-mathjax`` package of the ``dev`` extra) into the site's ``assets/mathjax/``,
    which the pages (``extra_javascript``) and the notebooks (mkdocs-jupyter's ``custom_mathjax_url``) load, with
    ``docs/javascripts/mathjax_local.js`` as its ``config/local/lorp.js`` (the fonts the package ships)."""
    shutil.copytree(
        Path(str(files("jupyter_server_mathjax") / "static")),
        Path(config["site_dir"]) / "assets" / "mathjax",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("localization"),  # English only: MathJax loads no locale file for it
    )
    local = Path(config["site_dir"]) / "assets" / "mathjax" / "config" / "local"
    local.mkdir(exist_ok=True)
    shutil.copyfile(Path(config["docs_dir"]) / "javascripts" / "mathjax_local.js", local / "lorp.js")
