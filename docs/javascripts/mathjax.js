// MathJax 2.7 for the formulas that pymdownx.arithmatex marks (generic mode: \( \) inline, \[ \] display).
// MathJax itself is served from the site (assets/mathjax/, copied from the jupyter-server-mathjax package by
// docs/hooks.py), never from a CDN. On a notebook page the notebook's own MathJax loaded first, with its own
// configuration ($ $ and $$ $$); this one is then left alone.
if (!(window.MathJax && window.MathJax.Hub)) {
  window.MathJax = {
    tex2jax: {
      inlineMath: [["\\(", "\\)"]],
      displayMath: [["\\[", "\\]"]],
      processEscapes: false,
      processEnvironments: true,
      ignoreClass: ".*|",
      processClass: "arithmatex",
    },
    messageStyle: "none",
  };
}
