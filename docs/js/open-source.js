// On the derivation pages the code is the point: show each "Source code" block open, next
// to the equation it computes, instead of collapsed.
function openSources() {
  if (!location.pathname.includes("/derivations/")) return;
  for (const block of document.querySelectorAll("details.mkdocstrings-source")) {
    block.open = true;
  }
}
if (typeof document$ !== "undefined") {
  document$.subscribe(openSources);
} else {
  document.addEventListener("DOMContentLoaded", openSources);
}
