// Live updates for the Syncflow dashboard: one EventSource on /ui/events; each
// `refresh` event makes htmx re-fetch the page's live region (hx-trigger
// "refresh from:body"). When events stop (hub unreachable, session ended) a
// banner says since when the data on screen is stale.
(function () {
  "use strict";
  var banner = document.getElementById("stale");
  var since = document.getElementById("stale-since");
  var lastOk = new Date();
  var SILENCE_MS = 8000;

  function fresh() {
    lastOk = new Date();
    if (!banner.hidden) {
      banner.hidden = true;
      document.body.classList.remove("is-stale");
    }
  }

  function stale() {
    if (!banner.hidden) return;
    since.textContent = lastOk.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
    since.setAttribute("datetime", lastOk.toISOString());
    banner.hidden = false;
    document.body.classList.add("is-stale");
  }

  var source = new EventSource("/ui/events");
  source.addEventListener("refresh", function () {
    fresh();
    htmx.trigger(document.body, "refresh");
  });
  source.onerror = stale;
  document.body.addEventListener("htmx:sendError", stale);
  document.body.addEventListener("htmx:responseError", stale);
  setInterval(function () {
    if (Date.now() - lastOk.getTime() > SILENCE_MS) stale();
  }, 1000);
})();
