// Render the \( \) and \[ \] spans that pymdownx.arithmatex leaves, with the KaTeX copy
// vendored into the site at build time (no CDN). Material replaces pages without a full
// reload (document$); on any other theme the DOMContentLoaded event does the same.
function renderMath(root) {
  renderMathInElement(root, {
    delimiters: [
      { left: "\\[", right: "\\]", display: true },
      { left: "\\(", right: "\\)", display: false },
    ],
    throwOnError: false,
  });
}
if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => renderMath(body));
} else {
  document.addEventListener("DOMContentLoaded", () => renderMath(document.body));
}
