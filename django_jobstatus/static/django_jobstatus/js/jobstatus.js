/* django-jobstatus: live durations, and the dashboard's polling of its JSON view.
   Plain script, no dependencies. Values from the server are written with textContent; the
   panels the JSON view sends rendered (Django templates, every value escaped) are parsed
   with DOMParser, which runs no script, and swapped in whole. */
(function () {
  "use strict";

  function formatDuration(seconds) {
    seconds = Math.max(seconds, 0);
    if (seconds < 10) { return seconds.toFixed(1) + " s"; }
    var whole = Math.floor(seconds);
    var hours = Math.floor(whole / 3600);
    var minutes = Math.floor((whole % 3600) / 60);
    var secs = whole % 60;
    function pad(n) { return (n < 10 ? "0" : "") + n; }
    if (hours) { return hours + " h " + pad(minutes) + " min"; }
    if (minutes) { return minutes + " min " + pad(secs) + " s"; }
    return secs + " s";
  }

  // A running run's time counts on from the seconds the server gave (data-elapsed, by its
  // clock) by the time passed here since the figure arrived. Never this computer's clock
  // against the run's start: the viewer's clock may be off by minutes or hours.
  var arrived = new WeakMap();

  function tickDurations() {
    var now = performance.now();
    document.querySelectorAll(".jobstatus-duration[data-elapsed]").forEach(function (el) {
      var elapsed = parseFloat(el.getAttribute("data-elapsed"));
      if (isNaN(elapsed)) { return; }
      if (!arrived.has(el)) { arrived.set(el, now); }
      el.textContent = formatDuration(elapsed + (now - arrived.get(el)) / 1000);
    });
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function progressCell(run) {
    var td = el("td", "jobstatus-progress-col");
    // progress is a share, 0 to 1; unknown: animated while running, empty while waiting.
    var working = run.status === "running";
    var outer = el("span", "jobstatus-progress" + (run.progress === null && working ? " jobstatus-indeterminate" : ""));
    var bar = el("span", "jobstatus-progress-bar");
    var percent = run.progress === null ? (working ? 100 : 0) : Math.round(Number(run.progress) * 1000) / 10;
    bar.style.width = percent + "%";
    outer.appendChild(bar);
    td.appendChild(outer);
    td.appendChild(document.createTextNode(" "));
    td.appendChild(el("span", "jobstatus-progress-label", run.progress === null ? "" : run.percent_done + "%"));
    return td;
  }

  function activeRow(run, root) {
    var tr = el("tr");
    tr.setAttribute("data-run", run.id);
    var name = el("td");
    var link = el("a", null, run.job_name);
    link.href = run.url;
    name.appendChild(link);
    var sub = [run.step, run.message].filter(Boolean).join(" · ");
    name.appendChild(el("div", "jobstatus-sub", sub.length > 120 ? sub.slice(0, 119) + "…" : sub));
    tr.appendChild(name);
    var status = el("td");
    status.appendChild(el("span", "jobstatus-badge jobstatus-" + String(run.status).replace(/[^a-z_]/g, ""), run.status_label));
    if (run.kill_requested) {
      status.appendChild(document.createTextNode(" "));
      status.appendChild(el("span", "jobstatus-badge jobstatus-stopping", root.getAttribute("data-label-stopping")));
    }
    if (run.stale) {
      status.appendChild(document.createTextNode(" "));
      status.appendChild(el("span", "jobstatus-badge jobstatus-stuck", root.getAttribute("data-label-stuck")));
    }
    tr.appendChild(status);
    tr.appendChild(progressCell(run));
    var duration = el("td", "nowrap");
    var span = el("span", "jobstatus-duration", run.duration);
    span.setAttribute("data-started", run.started_at || "");
    span.setAttribute("data-elapsed", run.elapsed === null ? "" : run.elapsed);
    duration.appendChild(span);
    tr.appendChild(duration);
    return tr;
  }

  function swapPanels(root, panels) {
    // Each panel's root carries data-panel="<name>": the tabs, chart, jobs, stuck runs, failures, health.
    var parser = new DOMParser();
    Object.keys(panels || {}).forEach(function (name) {
      var old = root.querySelector('[data-panel="' + name + '"]');
      var parsed = parser.parseFromString(panels[name], "text/html").body.firstElementChild;
      if (old && parsed && parsed.getAttribute("data-panel") === name) {
        old.replaceWith(document.importNode(parsed, true));
      }
    });
  }

  function render(root, data) {
    swapPanels(root, data.panels);
    Object.keys(data.counts).forEach(function (status) {
      var node = root.querySelector('[data-count="' + status + '"]');
      if (node) { node.textContent = data.counts[status]; }
    });
    var total = root.querySelector('[data-count="total"]');
    if (total) { total.textContent = data.total; }
    var body = root.querySelector("#jobstatus-active-rows");
    if (!body) { return; }
    var rows = document.createDocumentFragment();
    data.active.forEach(function (run) { rows.appendChild(activeRow(run, root)); });
    if (!data.active.length) {
      var tr = el("tr", "jobstatus-empty-row");
      var td = el("td", null, root.getAttribute("data-label-none"));
      td.colSpan = 4;
      tr.appendChild(td);
      rows.appendChild(tr);
    }
    body.replaceChildren(rows);
    tickDurations();
  }

  function startPolling(root) {
    var seconds = parseInt(root.getAttribute("data-poll"), 10);
    if (!seconds || seconds < 1) { return; }
    var url = root.getAttribute("data-url");
    var live = document.getElementById("jobstatus-live");
    var busy = false;
    function poll() {
      if (busy || document.hidden) { return; }
      busy = true;
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) { throw new Error(response.status); }
          return response.json();
        })
        .then(function (data) {
          render(root, data);
          if (live) { live.classList.remove("jobstatus-offline"); }
          root.setAttribute("data-updated", data.generated_at);
        })
        .catch(function () { if (live) { live.classList.add("jobstatus-offline"); } })
        .then(function () { busy = false; });
    }
    window.setInterval(poll, seconds * 1000);
    // A hidden tab asks nothing; shown again, it catches up at once.
    root.setAttribute("data-state", document.hidden ? "paused" : "live");
    document.addEventListener("visibilitychange", function () {
      root.setAttribute("data-state", document.hidden ? "paused" : "live");
      if (!document.hidden) { poll(); }
    });
  }

  function init() {
    tickDurations();
    window.setInterval(tickDurations, 1000);
    var root = document.getElementById("jobstatus-dashboard");
    if (root) { startPolling(root); }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
