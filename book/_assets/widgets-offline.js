// kerjepa book: loaded after require.js and before the vendored ipywidgets manager on pages with
// widgets (nb_ipywidgets_js in _config.yml).
(function () {
  // 1. The manager finds its icon fonts relative to the URL of its own AMD module; map that
  //    module id to the vendored copy in _static/vendor/widgets/, so the fonts resolve offline,
  //    under file:// as well as over http(s).
  var base = new URL("vendor/widgets/", document.currentScript.src).href;
  window.__jupyter_widgets_assets_path__ = base;
  require.config({ paths: { "@jupyter-widgets/html-manager/dist": base.replace(/\/$/, "") } });

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
