"""griffe extension for the API pages: a docstring paragraph that ends in ``::`` before an
indented block (``Example::`` and the like) ends in ``:`` on the page, the indented block being a
code block in Markdown too. Without it the page would show the ``::``. (Every docstring is in
Google style with Markdown code spans; this is the one piece of reST layout left.)
"""

from __future__ import annotations

import re

import griffe

_LITERAL_BLOCK = re.compile(r"::\n(\s*\n)+(?=[ \t]+\S)")


class LiteralBlocks(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _LITERAL_BLOCK.sub(lambda m: ":" + m.group(0)[2:], obj.docstring.value)
