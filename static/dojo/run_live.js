/* The live run page: the event box follows new events while the reader is at its bottom, and
 * stops following once they scroll up (a "jump to the newest" button then appears). Loading
 * earlier events keeps the reader's place. The metric chart is redrawn when an experiment ends. */
(function () {
  "use strict";
  var box = document.getElementById("run-events");
  if (!box) return;
  var jump = document.getElementById("run-jump");
  var state = document.getElementById("run-follow-state");
  var following = true;
  var heightBefore = null;

  function atBottom() { return box.scrollHeight - box.scrollTop - box.clientHeight < 24; }
  function toBottom() { box.scrollTop = box.scrollHeight; }
  function setFollowing(on) {
    following = on;
    box.dataset.follow = on ? "1" : "0";
    if (state) state.textContent = on ? "following the newest events" : "paused: scrolled up";
    if (on && jump) jump.hidden = true;
  }

  toBottom();
  box.addEventListener("scroll", function () { setFollowing(atBottom()); });
  if (jump) jump.addEventListener("click", function () { toBottom(); setFollowing(true); });

  document.body.addEventListener("htmx:oobAfterSwap", function (ev) {
    var target = ev.detail.target;
    if (target === box) {
      if (following) toBottom();
      else if (jump) jump.hidden = false;
    } else if (target && target.id === "run-new-experiments") {
      var chart = document.querySelector("#run-metric [data-chart]");
      if (chart) chart.dispatchEvent(new CustomEvent("chart:refresh", { bubbles: true }));
    }
  });
  // "Load earlier events" inserts above what the reader is looking at: keep it in place.
  document.body.addEventListener("htmx:beforeSwap", function (ev) {
    if (ev.detail.target && ev.detail.target.id === "run-earlier") heightBefore = box.scrollHeight;
  });
  document.body.addEventListener("htmx:afterSwap", function () {
    if (heightBefore !== null) { box.scrollTop += box.scrollHeight - heightBefore; heightBefore = null; }
  });
})();
