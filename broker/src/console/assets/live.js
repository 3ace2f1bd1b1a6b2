// Keyward console: follows a run in progress (docs/console.md). The page works without this
// script (a reload shows everything); with it, the run's new log output and its state arrive by
// server-sent events from the broker. Everything received is written with textContent, never as
// HTML, so a log line holding markup stays text.
"use strict";
(function () {
  var note = document.getElementById("live-note");
  var log = document.getElementById("run-log");
  if (!note || !log || typeof EventSource === "undefined") {
    return;
  }
  var source = new EventSource(note.getAttribute("data-events"));
  var classes = { stdout: "log-stdout", stderr: "log-stderr", keyward: "log-keyward" };

  source.addEventListener("log", function (event) {
    var chunk = JSON.parse(event.data);
    var span = document.createElement("span");
    span.className = classes[chunk.stream] || "log-stdout";
    span.textContent = chunk.text;
    var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.appendChild(span);
    if (atEnd) {
      log.scrollTop = log.scrollHeight;
    }
  });

  source.addEventListener("state", function (event) {
    var run = JSON.parse(event.data);
    var cell = document.getElementById("run-state");
    if (cell) {
      var badge = document.createElement("span");
      badge.className = "state state-" + run.state;
      badge.textContent = run.state;
      cell.textContent = "";
      cell.appendChild(badge);
      if (run.detail) {
        var detail = document.createElement("span");
        detail.className = "muted";
        detail.textContent = " " + run.detail;
        cell.appendChild(detail);
      }
    }
    var rows = document.querySelectorAll("tr[data-job]");
    for (var i = 0; i < rows.length; i++) {
      var id = rows[i].getAttribute("data-job");
      var state = rows[i].querySelector(".job-state");
      for (var j = 0; j < run.jobs.length; j++) {
        if (run.jobs[j].id === id && state) {
          state.textContent = run.jobs[j].state;
          // Why a queued job waited is stale once it is not queued.
          var waiting = rows[i].querySelector(".waiting");
          if (waiting && run.jobs[j].state !== "queued") {
            waiting.remove();
          }
        }
      }
    }
    if (run.settled) {
      // The stream ends here; without close() the browser would reconnect.
      source.close();
      note.textContent = "The run is " + run.state + ": reload for its credentials and sealed log.";
    }
  });
})();

// The runs list: when the broker says the list this page shows changed, fetch the page again
// and put its list in place of this one (the broker's own escaped markup, parsed as a document:
// nothing in it runs).
(function () {
  var live = document.getElementById("runs-live");
  if (!live || !document.getElementById("runs-table") || typeof EventSource === "undefined" || typeof DOMParser === "undefined") {
    return;
  }
  var source = new EventSource(live.getAttribute("data-events"));
  var fetching = false;
  var again = false;
  function refresh() {
    if (fetching) {
      again = true; // one more fetch once this one is done, so no change is missed
      return;
    }
    fetching = true;
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        return response.ok ? response.text() : Promise.reject(response.status);
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("runs-table");
        var shown = document.getElementById("runs-table");
        if (fresh && shown) {
          shown.replaceWith(document.importNode(fresh, true));
        }
      })
      .catch(function () {
        live.textContent = "The list stopped following changes; reload the page.";
        source.close();
      })
      .finally(function () {
        fetching = false;
        if (again) {
          again = false;
          refresh();
        }
      });
  }
  source.addEventListener("changed", refresh);
})();
