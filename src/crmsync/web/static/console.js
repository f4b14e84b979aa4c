// crmsync console: auto-refresh, row details, confirmations, selection.
// Plain browser JavaScript, no dependencies and no build step. Every piece of HTML it
// inserts was rendered (and escaped) by the server; it never builds markup from data.
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function fetchFragment(url) {
    return fetch(url, {
      credentials: "same-origin",
      headers: { "X-Requested-With": "fetch", "X-CSRF-Token": csrfToken() },
    }).then(function (response) {
      if (response.status === 401) {
        window.location.reload(); // the session ended: the page redirects to the login
        throw new Error("login required");
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.text();
    });
  }

  // -- auto-refresh of the live region ----------------------------------------------
  function setupRefresh() {
    var live = document.getElementById("live");
    if (!live) return;
    var toggle = document.getElementById("auto-refresh");
    var stamp = document.getElementById("refreshed");
    var seconds = parseInt(live.getAttribute("data-refresh-seconds"), 10) || 10;
    var dialog = document.getElementById("details");

    function refresh() {
      if (document.hidden || (toggle && !toggle.checked)) return;
      if (dialog && dialog.open) return;
      fetchFragment(live.getAttribute("data-refresh-url"))
        .then(function (html) {
          // Focus and the dialog are read when the answer arrives, not when it was
          // asked for: the user may have moved to another row (or opened one) since,
          // and the refresh must not take them back.
          if (dialog && dialog.open) return;
          var focused = document.activeElement;
          var inside = focused && live.contains(focused);
          var focusedObject = inside ? focused.getAttribute("data-object") : null;
          var focusedHour = inside ? focused.getAttribute("data-hour") : null;
          live.innerHTML = html;
          if (focusedObject) {
            var row = live.querySelector('tr[data-object="' + CSS.escape(focusedObject) + '"]');
            if (row) row.focus();
          }
          if (focusedHour) focusHour(live.querySelector('.hour[data-hour="' + CSS.escape(focusedHour) + '"]'));
          if (stamp) stamp.textContent = "Updated " + new Date().toLocaleTimeString();
        })
        .catch(function () {
          if (stamp) stamp.textContent = "Could not refresh; retrying";
        });
    }
    window.setInterval(refresh, seconds * 1000);
    window.crmsyncRefresh = refresh; // for people (and tests) who do not want to wait
  }

  // -- the chart: each hour's figures by keyboard (roving focus) and pointer -------------
  function focusHour(hour) {
    if (!hour) return;
    var all = hour.parentNode.querySelectorAll(".hour");
    all.forEach(function (h) {
      h.setAttribute("tabindex", h === hour ? "0" : "-1");
    });
    hour.focus();
  }

  function showHour(hour) {
    var readout = document.getElementById("chart-readout");
    if (readout && hour) readout.textContent = hour.getAttribute("data-label");
  }

  document.addEventListener("focusin", function (event) {
    var hour = event.target.closest && event.target.closest(".hour");
    if (hour) showHour(hour);
  });

  document.addEventListener("mouseover", function (event) {
    var hour = event.target.closest && event.target.closest(".hour");
    if (hour) showHour(hour);
  });

  document.addEventListener("keydown", function (event) {
    var hour = event.target.closest && event.target.closest(".hour");
    if (!hour) return;
    var hours = Array.prototype.slice.call(hour.parentNode.querySelectorAll(".hour"));
    var i = hours.indexOf(hour);
    var next = { ArrowLeft: i - 1, ArrowRight: i + 1, Home: 0, End: hours.length - 1 }[event.key];
    if (next === undefined || next < 0 || next >= hours.length) return;
    event.preventDefault();
    focusHour(hours[next]);
  });

  // -- row details --------------------------------------------------------------------
  function openDetails(row) {
    var dialog = document.getElementById("details");
    var body = document.getElementById("details-body");
    var url = row.getAttribute("data-details-url");
    if (!dialog || !body || !url || typeof dialog.showModal !== "function") {
      window.location.href = url;
      return;
    }
    fetchFragment(url + (url.indexOf("?") >= 0 ? "&" : "?") + "partial=1").then(function (html) {
      body.innerHTML = html;
      dialog.addEventListener(
        "close",
        function () {
          // Back to the row (a refresh may have replaced it), unless focus has moved on
          // already: the close event comes after the key that closed the dialog, and
          // the user may have gone to another row meanwhile.
          var active = document.activeElement;
          if (active && active !== document.body && !dialog.contains(active)) return;
          var again = document.querySelector('tr[data-object="' + CSS.escape(row.getAttribute("data-object")) + '"]');
          if (again) again.focus();
        },
        { once: true }
      );
      dialog.showModal();
    });
  }

  document.addEventListener("dblclick", function (event) {
    var row = event.target.closest("tr[data-details-url]");
    if (row) openDetails(row);
  });

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Enter") return;
    var row = event.target.closest && event.target.closest("tr[data-details-url]");
    if (row && event.target === row) {
      event.preventDefault();
      openDetails(row);
    }
  });

  document.addEventListener("keydown", function (event) {
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    var row = event.target.closest && event.target.closest("tr[data-details-url]");
    if (!row || event.target !== row) return;
    var next = event.key === "ArrowDown" ? row.nextElementSibling : row.previousElementSibling;
    if (next) {
      event.preventDefault();
      next.focus();
    }
  });

  // -- forms: confirmations, auto-submit, selection ----------------------------------------
  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    if (button && button.hasAttribute("data-needs-selection")) {
      if (!document.querySelector('input[name="ids"]:checked')) {
        event.preventDefault();
        window.alert("Select one or more errors first.");
        return;
      }
    }
    var question = button && button.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  document.addEventListener("change", function (event) {
    var target = event.target;
    var form = target.form;
    if (form && form.hasAttribute("data-autosubmit") && target.tagName === "SELECT") form.submit();
    if (target.id === "select-all") {
      document.querySelectorAll('input[name="ids"]').forEach(function (box) {
        box.checked = target.checked;
      });
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    document.documentElement.classList.add("js");
    setupRefresh();
  });
})();
