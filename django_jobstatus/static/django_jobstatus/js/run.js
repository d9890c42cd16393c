/* django-jobstatus: a run's page, live. Polls the run's JSON while it is active, the tab is
   visible and "follow" is on; stops when the run ends. Log lines come oldest first after the
   last one shown, a batch at a time: while the answer says "more", it asks again at once.
   Once the run has ended, the page's fields (its timeline and duration, error, result,
   attempts) and its tools are swapped for the server's rendering of the ended run.
   Plain script, no dependencies.
   Everything from the server is written with textContent, never as HTML; the page the
   server renders (every value escaped) is parsed with DOMParser, which runs no script. */
(function () {
  "use strict";

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function levelClass(level) {
    if (level >= 40) { return "error"; }
    if (level >= 30) { return "warning"; }
    if (level < 20) { return "debug"; }
    return "info";
  }

  function setText(selector, text) {
    var node = document.querySelector(selector);
    if (node) { node.textContent = text || "—"; }
  }

  function renderStatus(root, run) {
    var box = document.querySelector(".field-status_display .readonly");
    if (!box) { return; }
    var badges = [el("span", "jobstatus-badge jobstatus-" + String(run.status).replace(/[^a-z_]/g, ""), run.status_label)];
    if (run.is_active && run.kill_requested) {
      badges.push(document.createTextNode(" "));
      badges.push(el("span", "jobstatus-badge jobstatus-stopping", root.getAttribute("data-label-stopping")));
    }
    box.replaceChildren.apply(box, badges);
  }

  function renderProgress(run) {
    var box = document.querySelector(".field-progress_detail .readonly");
    if (!box) { return; }
    var outer = box.querySelector(".jobstatus-progress");
    var bar = box.querySelector(".jobstatus-progress-bar");
    var label = box.querySelector(".jobstatus-progress-label");
    if (!outer || !bar || !label) { return; }
    if (run.progress === null) {
      outer.classList.toggle("jobstatus-indeterminate", run.status === "running");
      bar.style.width = run.status === "running" ? "100%" : "0%";
      label.textContent = run.progress_current ? String(run.progress_current) : "";
    } else {
      outer.classList.remove("jobstatus-indeterminate");
      bar.style.width = (run.progress * 100).toFixed(1) + "%";
      label.textContent = run.percent_done + "% (" + run.progress_current + " / " + run.progress_total + ")";
    }
    var step = box.querySelector(".jobstatus-step");
    if (step) { step.textContent = run.step; }
  }

  function renderLogs(root, logs) {
    var body = document.querySelector("#jobstatus-logs .jobstatus-log-table tbody");
    if (!body || !logs.length) { return; }
    var limit = parseInt(root.getAttribute("data-log-limit"), 10) || 200;
    logs.forEach(function (line) {
      var tr = el("tr", "jobstatus-log-row jobstatus-log-new");
      tr.setAttribute("data-level", line.level);
      var time = el("td", "nowrap");
      var t = el("time", null, line.time);
      t.setAttribute("datetime", line.created_at);
      time.appendChild(t);
      tr.appendChild(time);
      var level = el("td");
      level.appendChild(el("span", "jobstatus-level jobstatus-level-" + levelClass(line.level), line.level_name));
      tr.appendChild(level);
      tr.appendChild(el("td", "jobstatus-log-message", line.message));
      body.insertBefore(tr, body.firstChild);
      root.setAttribute("data-after", line.id);
    });
    while (body.children.length > limit) { body.removeChild(body.lastChild); }
  }

  function render(root, data) {
    var run = data.run;
    renderStatus(root, run);
    renderProgress(run);
    setText(".field-step .readonly", run.step);
    setText(".field-message .readonly", run.message);
    setText("#jobstatus-live-run-status", run.status_label);
    renderLogs(root, data.logs);
    root.setAttribute("data-status", run.status);
    root.setAttribute("data-updated", run.updated_at);
  }

  // The ended run as the server renders it: every field and the tools, swapped in place
  // (the timeline, whose duration kept counting from the start, the error, the result...).
  function settle() {
    fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) { throw new Error(response.status); }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll(".form-row, .object-tools").forEach(function (node) {
          var name = Array.prototype.find.call(node.classList, function (c) {
            return c.indexOf("field-") === 0 || c === "object-tools";
          });
          var other = name && fresh.querySelector("." + name);
          if (other) { node.replaceWith(document.adoptNode(other)); }
        });
      })
      .catch(function () { /* the live figures stay; a reload shows the rest */ });
  }

  function start(root) {
    var seconds = parseFloat(root.getAttribute("data-poll")) || 2;
    var follow = document.getElementById("jobstatus-follow");
    var timer = null;
    var busy = false;

    function url() {
      var query = "?after=" + encodeURIComponent(root.getAttribute("data-after") || "");
      var level = root.getAttribute("data-log-level");
      if (level) { query += "&log_level=" + encodeURIComponent(level); }
      return root.getAttribute("data-url") + query;
    }
    function stop(state) {
      if (timer !== null) { window.clearInterval(timer); timer = null; }
      root.setAttribute("data-state", state);
    }
    function poll() {
      if (busy) { return; }
      busy = true;
      var again = false;
      fetch(url(), { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) { throw new Error(response.status); }
          return response.json();
        })
        .then(function (data) {
          render(root, data);
          root.classList.remove("jobstatus-offline");
          if (data.more) {
            // More lines arrived than one answer carries: fetch the rest now (also once
            // the run has ended), unless following stopped meanwhile.
            again = root.getAttribute("data-state") === "live";
          } else if (!data.run.is_active) {
            stop("ended");
            if (follow) { follow.checked = false; follow.disabled = true; }
            settle();
          }
        })
        .catch(function () { root.classList.add("jobstatus-offline"); })
        .then(function () {
          busy = false;
          if (again) { poll(); }
        });
    }
    function resume() {
      if (root.getAttribute("data-state") === "ended") { return; }
      if (follow && !follow.checked) { stop("off"); return; }
      if (document.visibilityState === "hidden") { stop("paused"); return; }
      if (timer === null) {
        root.setAttribute("data-state", "live");
        poll();
        timer = window.setInterval(poll, seconds * 1000);
      }
    }
    document.addEventListener("visibilitychange", resume);
    if (follow) { follow.addEventListener("change", resume); }
    if (root.getAttribute("data-active") === "true") { resume(); } else { stop("ended"); }
  }

  function init() {
    var root = document.getElementById("jobstatus-live-run");
    if (root) { start(root); }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
