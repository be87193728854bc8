// The status page works without this script: sort links and the country form are
// plain GET requests. With it, sorting happens in place and the table refreshes
// itself every minute (a conditional request: 304 while nothing changed).
"use strict";
(function () {
  var table = document.getElementById("servers");
  if (!table) { return; }

  function keyOf(row, sort) {
    if (sort === "load") {
      var v = row.getAttribute("data-load");
      return v === "" ? null : parseFloat(v);
    }
    return row.getAttribute("data-" + sort) || "";
  }

  function sortRows(sort, order) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).filter(function (r) {
      return r.hasAttribute("data-name");
    });
    var sign = order === "desc" ? -1 : 1;
    rows.sort(function (a, b) {
      var x = keyOf(a, sort), y = keyOf(b, sort);
      if (x === null || y === null) {
        if (x === y) { return a.getAttribute("data-name") < b.getAttribute("data-name") ? -1 : 1; }
        return x === null ? 1 : -1;  // no figure: always last
      }
      if (x < y) { return -sign; }
      if (x > y) { return sign; }
      return a.getAttribute("data-name") < b.getAttribute("data-name") ? -1 : 1;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function updateHeaders(params) {
    var sort = params.get("sort") || "load", order = params.get("order") || "asc";
    table.querySelectorAll("thead a[data-sort]").forEach(function (a) {
      var key = a.getAttribute("data-sort"), current = key === sort;
      var th = a.parentNode;
      th.setAttribute("aria-sort", current ? (order === "asc" ? "ascending" : "descending") : "none");
      var next = new URLSearchParams(params);
      next.set("sort", key);
      next.set("order", current && order === "asc" ? "desc" : "asc");
      a.setAttribute("href", "?" + next.toString());
      var mark = a.querySelector("span");
      if (mark) { a.removeChild(mark); }
      if (current) {
        mark = document.createElement("span");
        mark.setAttribute("aria-hidden", "true");
        mark.textContent = order === "asc" ? " \u25b2" : " \u25bc";
        a.appendChild(mark);
      }
    });
    document.querySelectorAll("form.filter input[name=sort]").forEach(function (i) { i.value = sort; });
    document.querySelectorAll("form.filter input[name=order]").forEach(function (i) { i.value = order; });
  }

  table.addEventListener("click", function (event) {
    var a = event.target.closest("thead a[data-sort]");
    if (!a) { return; }
    event.preventDefault();
    var params = new URLSearchParams(a.getAttribute("href").slice(1));
    sortRows(params.get("sort") || "load", params.get("order") || "asc");
    updateHeaders(params);
    history.replaceState(null, "", "?" + params.toString());
  });

  function refresh() {
    fetch(location.pathname + location.search, { credentials: "omit" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("servers"), summary = doc.getElementById("summary");
        if (fresh) { table.tBodies[0].replaceWith(fresh.tBodies[0]); }
        if (summary) { document.getElementById("summary").replaceWith(summary); }
      })
      .catch(function () { /* offline for a moment: the next refresh tries again */ });
  }
  var every = parseInt(table.getAttribute("data-refresh") || "60", 10);
  if (every > 0) { setInterval(refresh, every * 1000); }
}());
