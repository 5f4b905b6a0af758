"""mkdocs hook: the notebooks link to ``../docs/NAME.md`` (right in JupyterLab and on GitHub);
on the site a notebook is the page ``notebooks/NN_name/``, so those links become ``../../NAME/``."""

from __future__ import annotations

import re

_DOCS_LINK = re.compile(r'href="\.\./docs/([\w-]+)\.md(#[\w-]*)?"')


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    return _DOCS_LINK.sub(lambda m: f'href="../../{m.group(1)}/{m.group(2) or ""}"', html)
