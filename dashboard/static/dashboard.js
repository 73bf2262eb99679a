// The dashboard's own script (no library): sortable and filterable tables, and live updates. The server says when
// a watched folder changed (server-sent events on /events); the page then fetches its main part again and swaps
// it in, keeping each table's sort order and filters.
"use strict";

const tableState = {}; // table id -> {col, dir, filters: {attr|"text": value}}

function cellValue(row, col) {
  const cell = row.cells[col];
  if (!cell) return "";
  const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
  const number = Number(raw);
  return raw !== "" && !Number.isNaN(number) ? number : raw.toLowerCase();
}

function sortTable(table, col, dir) {
  const body = table.tBodies[0];
  if (!body) return;
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellValue(a, col), y = cellValue(b, col);
    if (x === y) return 0;
    if (x === "" || x === "—") return 1;
    if (y === "" || y === "—") return -1;
    if (typeof x === typeof y) return (x < y ? -1 : 1) * dir;
    return (typeof x === "number" ? -1 : 1) * dir;
  });
  rows.forEach((r) => body.appendChild(r));
  table.querySelectorAll("th").forEach((th, i) => {
    th.classList.toggle("sorted-asc", i === col && dir === 1);
    th.classList.toggle("sorted-desc", i === col && dir === -1);
  });
}

function filterTable(table) {
  const state = tableState[table.id] || {};
  const filters = state.filters || {};
  const text = (filters.text || "").toLowerCase();
  Array.from(table.tBodies[0] ? table.tBodies[0].rows : []).forEach((row) => {
    let show = !text || row.textContent.toLowerCase().includes(text);
    for (const [attr, value] of Object.entries(filters)) {
      if (attr !== "text" && value && row.dataset[attr] !== value) show = false;
    }
    row.hidden = !show;
  });
}

function setUpTables(root) {
  root.querySelectorAll("table.sortable").forEach((table, n) => {
    if (!table.id) table.id = "table-" + n;
    const state = tableState[table.id];
    table.querySelectorAll("thead th").forEach((th, col) => {
      th.tabIndex = 0;
      th.title = "sort";
      const sort = () => {
        const current = tableState[table.id] || {};
        const dir = current.col === col ? -(current.dir || -1) : 1;
        tableState[table.id] = { ...current, col, dir };
        sortTable(table, col, dir);
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sort(); });
    });
    if (state && state.col !== undefined) sortTable(table, state.col, state.dir);
    filterTable(table);
  });
  root.querySelectorAll("[data-filter-for]").forEach((input) => {
    const id = input.dataset.filterFor;
    const attr = input.dataset.filterAttr || "text";
    const state = (tableState[id] = tableState[id] || {});
    state.filters = state.filters || {};
    if (state.filters[attr] !== undefined) input.value = state.filters[attr];
    input.addEventListener("input", () => {
      tableState[id].filters[attr] = input.value;
      const table = document.getElementById(id);
      if (table) filterTable(table);
    });
  });
}

function openDetails(root) {
  return Array.from(root.querySelectorAll("details")).map((d) => d.open);
}

async function refresh(main) {
  const url = new URL(window.location.href);
  url.searchParams.set("part", "main");
  const response = await fetch(url, { headers: { Accept: "text/html" }, cache: "no-store" });
  if (!response.ok) return;
  const html = await response.text();
  const open = openDetails(main);
  const active = document.activeElement;
  const focusId = active && active.dataset ? active.dataset.filterFor + ":" + (active.dataset.filterAttr || "text") : null;
  main.innerHTML = html;
  main.querySelectorAll("details").forEach((d, i) => { if (open[i]) d.open = true; });
  setUpTables(main);
  if (focusId) {
    const [id, attr] = focusId.split(":");
    const again = main.querySelector(`[data-filter-for="${id}"]${attr === "text" ? ":not([data-filter-attr])" : `[data-filter-attr="${attr}"]`}`);
    if (again) again.focus();
  }
  document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
}

function watch(main) {
  const keys = Object.keys(main.dataset).filter((k) => k.startsWith("watch")).map((k) => main.dataset[k]);
  const state = document.getElementById("live-state");
  if (!keys.length || !window.EventSource) return;
  const query = keys.map((k) => "k=" + encodeURIComponent(k)).join("&");
  const source = new EventSource("/events?" + query);
  let pending = null;
  source.addEventListener("open", () => { if (state) { state.textContent = "live"; state.classList.add("on"); } });
  source.addEventListener("error", () => { if (state) { state.textContent = "reconnecting"; state.classList.remove("on"); } });
  source.addEventListener("change", () => {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      try { await refresh(main); } catch (e) { if (state) state.textContent = "update failed"; }
    }, 150);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const main = document.getElementById("live");
  setUpTables(document);
  if (main) watch(main);
});
