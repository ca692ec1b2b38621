/* Werkbank overview: keeps the machine tiles and the session list fresh.
 *
 * Polls /live.json (same origin, the session cookie) every few seconds and writes the
 * server's ready-made, translated texts into the elements marked with data-field, so
 * this script needs no translations of its own. Without it the page still works: a
 * <noscript> meta refresh reloads it. Only textContent is written, never HTML.
 */
(function () {
  "use strict";

  var root = document.querySelector("[data-live-url]");
  if (!root || !window.fetch) {
    return;
  }
  var url = root.getAttribute("data-live-url");
  var everyMs = Math.max(1, Number(root.getAttribute("data-refresh-s")) || 3) * 1000;
  var timer = null;
  var busy = false;

  // "device.label" -> data.device.label
  function lookup(data, path) {
    return path.split(".").reduce(function (value, key) {
      return value == null ? undefined : value[key];
    }, data);
  }

  // Fill every data-field and data-flag inside `element` from `data`.
  function fill(element, data) {
    element.querySelectorAll("[data-field]").forEach(function (el) {
      var value = lookup(data, el.getAttribute("data-field"));
      var text = value == null ? "" : String(value);
      if (el.textContent !== text) {
        el.textContent = text;
      }
      if (el.hasAttribute("data-hide-empty")) {
        el.hidden = text === "";
      }
    });
    var flagged = Array.prototype.slice.call(element.querySelectorAll("[data-flag]"));
    if (element.hasAttribute("data-flag")) {
      flagged.push(element);
    }
    flagged.forEach(function (el) {
      el.setAttribute("data-on", JSON.stringify(Boolean(lookup(data, el.getAttribute("data-flag")))));
    });
  }

  function updateMachines(machines) {
    var tiles = root.querySelectorAll("[data-machine-id]");
    if (tiles.length !== machines.length) {
      // A machine was added or removed: the server renders the new set best.
      window.location.reload();
      return;
    }
    machines.forEach(function (machine) {
      var tile = root.querySelector('[data-machine-id="' + machine.id + '"]');
      if (!tile) {
        window.location.reload();
        return;
      }
      tile.setAttribute("data-state", machine.state);
      fill(tile, machine);
    });
  }

  function updateSessions(sessions) {
    var body = root.querySelector("[data-live-sessions]");
    var template = document.getElementById("session-row");
    if (!body || !template) {
      return;
    }
    var rows = document.createDocumentFragment();
    sessions.forEach(function (session) {
      var row = template.content.firstElementChild.cloneNode(true);
      fill(row, session);
      rows.appendChild(row);
    });
    body.replaceChildren(rows);
    var empty = root.querySelector("[data-live-empty]");
    if (empty) {
      empty.hidden = sessions.length > 0;
    }
  }

  function showError(text) {
    var box = root.querySelector("[data-live-error]");
    if (box) {
      box.textContent = text || "";
      box.hidden = !text;
    }
  }

  function poll() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (response.status === 401 || response.status === 403) {
          // Logged out (or the role changed): a reload shows the login page.
          window.location.reload();
          throw new Error("not logged in");
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        updateMachines(data.machines);
        updateSessions(data.sessions);
        var updated = root.querySelector("[data-live-updated]");
        if (updated) {
          updated.textContent = data.updated_label;
        }
        root.setAttribute("data-updated-at", data.updated_at);
        showError("");
      })
      .catch(function () {
        showError(root.getAttribute("data-lost-text"));
      })
      .finally(function () {
        busy = false;
      });
  }

  function start() {
    if (timer === null) {
      timer = window.setInterval(poll, everyMs);
    }
  }

  function stop() {
    if (timer !== null) {
      window.clearInterval(timer);
      timer = null;
    }
  }

  // A phone in a pocket need not poll: stop while hidden, refresh at once when shown again.
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      stop();
    } else {
      poll();
      start();
    }
  });
  start();
})();
