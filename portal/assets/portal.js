// halite portal: the live console of a job page. Follows the job's
// Server-Sent Events (/v1/jobs/JID/events, authenticated by the session
// cookie); the browser reconnects by itself with Last-Event-ID and the
// master replays what was missed, so no line is lost or shown twice.
"use strict";
(function () {
  var root = document.getElementById("console");
  if (!root || root.dataset.done === "true" || !window.EventSource) {
    return;
  }
  var lanes = {};
  root.querySelectorAll(".lane").forEach(function (lane) {
    var lines = lane.querySelector(".lines");
    // The stream replays the job from its start: begin from nothing.
    lines.textContent = "";
    lines.dataset.count = "0";
    lane.querySelectorAll(".stage").forEach(function (stage) {
      stage.className = "stage status-pending";
      stage.querySelector(".status").textContent = "pending";
      stage.querySelector(".dur").textContent = "";
    });
    lanes[lane.dataset.minion] = lane;
  });
  function stuckToBottom(el) {
    return el.scrollHeight - el.scrollTop - el.clientHeight < 24;
  }
  function setState(lane, state) {
    var badge = lane.querySelector(".lane-state");
    badge.textContent = state;
    badge.className = "badge lane-state state-" + state;
  }
  function stage(lane, event) {
    var flow = lane.querySelector(".flow");
    var item = flow.querySelector('[data-stage="' + CSS.escape(event.stage) + '"]');
    if (!item) {
      item = document.createElement("li");
      item.dataset.stage = event.stage;
      item.innerHTML = '<span class="name"></span> <span class="status"></span> <span class="dur"></span>';
      item.querySelector(".name").textContent = event.stage;
      flow.appendChild(item);
    }
    item.className = "stage status-" + event.status;
    item.querySelector(".status").textContent = event.status;
    item.querySelector(".dur").textContent =
      event.duration_ms != null ? (event.duration_ms / 1000).toFixed(1) + " s" : "";
  }
  var source = new EventSource("/v1/jobs/" + encodeURIComponent(root.dataset.jid) + "/events");
  source.onmessage = function (message) {
    var entry;
    try { entry = JSON.parse(message.data); } catch (e) { return; }
    var lane = lanes[entry.minion];
    if (!lane) { return; }
    if (entry.kind === "job/event") {
      var event = entry.data;
      if (event.type === "progress") {
        var lines = lane.querySelector(".lines");
        var follow = stuckToBottom(lines);
        lines.appendChild(document.createTextNode(event.line + "\n"));
        lines.dataset.count = String(Number(lines.dataset.count || 0) + 1);
        if (follow) { lines.scrollTop = lines.scrollHeight; }
        setState(lane, "running");
      } else if (event.type === "stage") {
        stage(lane, event);
        setState(lane, "running");
      }
    } else if (entry.kind === "job/return") {
      setState(lane, entry.data.success ? "succeeded" : "failed");
    }
  };
  source.addEventListener("done", function () {
    source.close();
    var state = document.getElementById("job-state");
    state.textContent = "done";
    state.className = "badge state-done";
    root.dataset.done = "true";
  });
})();
