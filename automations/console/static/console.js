// The console's only script: the live events feed (server-sent events) and a refresh of an
// automation's window state. Everything is inserted as text (textContent), never as HTML.
"use strict";

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text == null ? "" : String(text);
  return td;
}

function eventRow(e) {
  const tr = document.createElement("tr");
  tr.dataset.entry = e.entry_id;
  tr.className = "fresh";
  tr.appendChild(cell(e.occurred, "time"));
  const name = document.createElement("td");
  const link = document.createElement("a");
  link.href = "/events/" + encodeURIComponent(e.entry_id);
  link.textContent = e.event == null ? "(unreadable entry)" : e.event;
  name.appendChild(link);
  tr.appendChild(name);
  tr.appendChild(cell(e.resource_id, "mono"));
  tr.appendChild(cell(e.preview, "mono payload"));
  return tr;
}

function liveFeed(table) {
  const status = document.getElementById("live-status");
  if (!window.EventSource || table.dataset.liveOn !== "yes") {
    if (status) status.textContent = "older events: live feed off";
    return;
  }
  const body = table.tBodies[0];
  const source = new EventSource(table.dataset.live);
  source.onopen = () => { if (status) status.textContent = "● live"; };
  source.onerror = () => { if (status) status.textContent = "reconnecting…"; };
  source.addEventListener("event", (message) => {
    const event = JSON.parse(message.data);
    const none = body.querySelector("tr.none");
    if (none) none.remove();
    body.insertBefore(eventRow(event), body.firstChild);
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  });
}

function windowsRefresh(section) {
  const body = section.querySelector("tbody");
  async function refresh() {
    try {
      const answer = await fetch(section.dataset.refresh, { headers: { Accept: "application/json" } });
      if (!answer.ok) return;
      const data = await answer.json();
      const buckets = data.state.buckets;
      if (!buckets.length) return;
      body.replaceChildren(...buckets.map((b) => {
        const tr = document.createElement("tr");
        const labels = Object.entries(b.labels).map(([k, v]) => k + "=" + v).join(" ") || "(one bucket)";
        tr.append(cell(b.trigger_id.slice(0, 8), "mono"), cell(labels, "mono"),
          cell(b.count + " / " + b.threshold, "num"),
          cell(b.start + " → " + b.end + (b.open ? "" : " (ended)"), "time"), cell(b.posture),
          cell(b.deadline || "–", "time"));
        return tr;
      }));
    } catch (_) { /* the next tick tries again */ }
  }
  setInterval(refresh, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  const events = document.getElementById("events");
  if (events) liveFeed(events);
  const windows = document.getElementById("windows");
  if (windows) windowsRefresh(windows);
  document.querySelectorAll("button.danger").forEach((button) => {
    button.addEventListener("click", (click) => {
      if (!window.confirm(button.textContent + "?")) click.preventDefault();
    });
  });
});
