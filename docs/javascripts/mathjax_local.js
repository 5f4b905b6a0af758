// MathJax 2.7's local configuration for every page, notebooks included: docs/hooks.py copies it to
// assets/mathjax/config/local/lorp.js, which "?config=...,local/lorp" loads. The jupyter-server-mathjax package ships
// the STIX-Web fonts only (as Jupyter configures it), so MathJax is told to use them and look for no other.
MathJax.Hub.Config({
  "HTML-CSS": { availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null },
});
MathJax.Ajax.loadComplete("[MathJax]/config/local/lorp.js");
