// Draws the ```mermaid blocks with docs/js/mermaid.min.js (see README.md here), nothing from a CDN.
//
// pymdownx.superfences writes each block as <pre class="mermaid"><code>TEXT</code></pre>. Mermaid
// wants the text directly in the element, so each block becomes <div class="mermaid">TEXT</div>
// and mermaid.run() replaces the text with an <svg>. This works with any theme. mkdocs-material
// looks for pre.mermaid when DOMContentLoaded fires (its own handler) and would draw into a closed
// shadow root, loading Mermaid from unpkg unless window.mermaid is already defined. This script
// runs from extra_javascript at the end of <body>, before DOMContentLoaded, so Material finds no
// pre.mermaid left. (With Material's navigation.instant, pages reached without a reload are
// drawn by Material itself, with this same window.mermaid.)
(function () {
  "use strict";
  var mermaid = window.mermaid;
  if (!mermaid || typeof mermaid.run !== "function") {
    return; // mermaid.min.js did not load: the blocks stay readable text
  }
  var body = document.body;
  var dark = !!body && body.getAttribute("data-md-color-scheme") === "slate";
  mermaid.initialize({ startOnLoad: false, theme: dark ? "dark" : "default" });

  function draw() {
    var nodes = [];
    document.querySelectorAll("pre.mermaid").forEach(function (pre) {
      var div = document.createElement("div");
      div.className = "mermaid";
      div.textContent = pre.textContent;
      pre.replaceWith(div);
      nodes.push(div);
    });
    if (nodes.length) {
      mermaid.run({ nodes: nodes }).catch(function (error) {
        console.error("mermaid:", error);
      });
    }
  }

  draw(); // now, ahead of Material
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw); // a theme that loads scripts in <head>
  }
})();
