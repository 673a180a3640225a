/* Sort and filter for a cxrseg report: the table rows and gallery cards share data-i and move together. */
(function () {
  "use strict";
  var table = document.getElementById("rows");
  var gallery = document.getElementById("gallery");
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var cards = {};
  Array.prototype.forEach.call(gallery.children, function (card) { cards[card.dataset.i] = card; });
  var filter = document.getElementById("filter");
  var sort = document.getElementById("sort");
  var shown = document.getElementById("shown");
  document.getElementById("controls").hidden = false;

  function matches(row, value) {
    if (!value || value === "all") return true;
    var kind = value.slice(0, value.indexOf(":")), name = value.slice(value.indexOf(":") + 1);
    if (kind === "status") return row.dataset.status === name;
    var flags = row.dataset.flags ? row.dataset.flags.split(" ") : [];
    return name === "any" ? flags.length > 0 : flags.indexOf(name) >= 0;
  }

  function applyFilter() {
    var value = filter ? filter.value : "all", count = 0;
    rows.forEach(function (row) {
      var keep = matches(row, value), card = cards[row.dataset.i];
      row.hidden = !keep;
      if (card) card.hidden = !keep;
      if (keep) count += 1;
    });
    shown.textContent = count;
  }

  function compare(numeric, sign) {
    return function (a, b) {
      if (numeric) {
        if (isNaN(a.v)) return isNaN(b.v) ? a.i - b.i : 1;  /* empty values last either way */
        if (isNaN(b.v)) return -1;
        return sign * (a.v - b.v) || a.i - b.i;
      }
      return sign * a.v.localeCompare(b.v) || a.i - b.i;
    };
  }

  function applySort(key, direction) {
    var header = table.querySelector('th[data-key="' + key + '"]');
    if (!header) return;
    var column = header.cellIndex, numeric = header.dataset.type === "num";
    var keyed = rows.map(function (row, i) {
      var raw = row.cells[column].dataset.v;
      return { v: numeric ? (raw === "" ? NaN : parseFloat(raw)) : raw, i: i, row: row };
    });
    keyed.sort(compare(numeric, direction === "desc" ? -1 : 1));
    rows = keyed.map(function (k) { return k.row; });
    var rowPart = document.createDocumentFragment(), cardPart = document.createDocumentFragment();
    rows.forEach(function (row) {
      rowPart.appendChild(row);
      if (cards[row.dataset.i]) cardPart.appendChild(cards[row.dataset.i]);
    });
    body.appendChild(rowPart);
    gallery.appendChild(cardPart);
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) {
      cell.setAttribute("aria-sort", cell === header ? (direction === "desc" ? "descending" : "ascending") : "none");
    });
    sort.value = key + ":" + direction;
    gallery.dataset.sort = sort.value;
  }

  table.tHead.addEventListener("click", function (event) {
    var header = event.target.closest("th[data-key]");
    if (!header) return;
    applySort(header.dataset.key, header.getAttribute("aria-sort") === "ascending" ? "desc" : "asc");
  });
  sort.addEventListener("change", function () {
    var parts = sort.value.split(":");
    applySort(parts[0], parts[1]);
  });
  if (filter) filter.addEventListener("change", applyFilter);
  Array.prototype.forEach.call(document.querySelectorAll("[data-filter]"), function (link) {
    link.addEventListener("click", function (event) {
      if (!filter) return;
      event.preventDefault();
      filter.value = link.dataset.filter;
      applyFilter();
      gallery.scrollIntoView();
    });
  });

  var viewer = document.getElementById("viewer");
  gallery.addEventListener("click", function (event) {
    var link = event.target.closest("a.full");
    if (!link || typeof viewer.showModal !== "function") return;
    event.preventDefault();
    viewer.querySelector("img").src = link.getAttribute("href");
    viewer.querySelector("figcaption").textContent = link.dataset.caption;
    viewer.showModal();
  });
  viewer.addEventListener("click", function (event) {
    if (event.target === viewer || event.target.closest("button.close")) viewer.close();
  });
  sort.value = gallery.dataset.sort;
})();
