
document.querySelectorAll("table.sortable thead th").forEach(function (th, i) {
  th.dataset.sort = 1; th.title = "click to sort";
  th.onclick = function () {
    var tb = th.closest("table").tBodies[0], rows = [].slice.call(tb.rows);
    var d = th.dataset.d = -(th.dataset.d || -1);
    var key = function (r) {
      var c = r.cells[i]; if (!c) return "";
      return c.dataset.v !== undefined ? parseFloat(c.dataset.v) : c.textContent.trim().toLowerCase();
    };
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === "" || y === "") return (x === "") - (y === "");
      return (x > y ? 1 : x < y ? -1 : 0) * d;
    });
    rows.forEach(function (r) { tb.appendChild(r); });
  };
});
