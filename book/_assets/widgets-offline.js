// kerjepa book: loaded after require.js and before the vendored ipywidgets manager on pages with
// widgets (nb_ipywidgets_js in _config.yml).
(function () {
  // 1. The manager finds its icon fonts relative to the URL of its own AMD module; map those
  //    module ids to the vendored copy in _static/vendor/widgets/, so the fonts resolve offline,
  //    under file:// as well as over http(s). embed-amd.js bundles the manager twice (the
  //    "libembed-amd" entry and "@jupyter-widgets/html-manager", which the entry loads), and
  //    each injects the same widget style sheet; without the second mapping the second copy
  //    resolves the Font Awesome URLs relative to the page (file not found).
  var base = new URL("vendor/widgets/", document.currentScript.src).href;
  window.__jupyter_widgets_assets_path__ = base;
  require.config({ paths: {
    "@jupyter-widgets/html-manager/dist": base.replace(/\/$/, ""),
    "@jupyter-widgets/html-manager": base + "html-manager"
  } });

  //    With both copies resolved alike they are identical: keep the first, drop the repeat (it
  //    only costs a second parse of 180 kB of CSS). The manager inserts an empty <style> and
  //    fills it in the same task; the observer runs after that task, before any rendering.
  var seen = new Set();
  Array.prototype.forEach.call(document.querySelectorAll("style"), function (s) {
    seen.add(s.textContent);
  });
  new MutationObserver(function (records) {
    records.forEach(function (record) {
      Array.prototype.forEach.call(record.addedNodes, function (node) {
        if (node.nodeName !== "STYLE" || node.textContent.length < 1000) {
          return;
        }
        if (seen.has(node.textContent)) {
          node.parentNode.removeChild(node);
        } else {
          seen.add(node.textContent);
        }
      });
    });
  }).observe(document.head, { childList: true });

  // 2. The widget controls typeset their labels with the MathJax 2 call
  //    MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book ships MathJax 3, which has
  //    no Hub. Once MathJax 3 is on the page (its script is deferred, so by DOMContentLoaded),
  //    forward that call to MathJax.typesetPromise.
  document.addEventListener("DOMContentLoaded", function () {
    var mj = window.MathJax;
    if (!mj || mj.Hub || !mj.version) {
      return;
    }
    mj.Hub = {
      Queue: function (job) {
        var element = job && job[2];
        var ready = mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve();
        return ready.then(function () {
          return mj.typesetPromise(element ? [element] : undefined);
        });
      }
    };
  });
})();
