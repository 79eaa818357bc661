// kerjepa book: loaded on every page (html_js_files in _config.yml).
// pydata-sphinx-theme reads the colour mode from localStorage and logs a console error when a
// reader opens the book for the first time (nothing stored yet); start from "auto" instead.
if (!document.documentElement.dataset.mode) {
  document.documentElement.dataset.mode = "auto";
}
