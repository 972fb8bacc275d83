// The usage panel (a bar per window) and the admin tables.

const DIMENSIONS = [
  ["input", "inputTokens", "input"],
  ["output", "outputTokens", "output"],
  ["total", "totalTokens", "total"],
];

/** One shape for a window from ``/v1/usage/me`` (the meter's names) or from an answer's
 * ``tokenUsage`` (the AWS sample's names). */
export function normalizeWindow(w) {
  const pick = (obj, meterName, sampleName) => obj?.[meterName] ?? obj?.[sampleName] ?? null;
  const dims = {};
  for (const [meterName, sampleName, label] of DIMENSIONS) {
    dims[label] = {
      used: pick(w.used, meterName, sampleName) ?? 0,
      limit: pick(w.limit, meterName, sampleName),
    };
  }
  return { name: w.name, resetsAt: w.resets_at ?? w.resetsAt ?? null, dims };
}

function binding(window) {
  let best = null;
  for (const [label, d] of Object.entries(window.dims)) {
    if (!d.limit) continue;
    const fraction = d.used / d.limit;
    if (!best || fraction > best.fraction) best = { label, fraction, ...d };
  }
  return best;
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

export function renderUsage(container, windows) {
  container.replaceChildren();
  for (const raw of windows) {
    const window = normalizeWindow(raw);
    const main = binding(window);
    const item = document.createElement("div");
    item.className = "window";
    item.dataset.window = window.name;
    for (const [label, d] of Object.entries(window.dims)) {
      item.dataset[`used${label[0].toUpperCase()}${label.slice(1)}`] = String(d.used);
    }
    const title = document.createElement("div");
    title.textContent = window.name;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-label", `${window.name} usage`);
    const fill = document.createElement("div");
    fill.className = "fill";
    const percent = main ? Math.min(100, Math.round(main.fraction * 100)) : 0;
    fill.style.width = `${percent}%`;
    if (percent >= 100) fill.classList.add("full");
    else if (percent >= 80) fill.classList.add("high");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", String(percent));
    bar.append(fill);
    const numbers = document.createElement("div");
    numbers.className = "numbers";
    const parts = Object.entries(window.dims)
      .filter(([, d]) => d.limit)
      .map(([label, d]) => `${label} ${d.used.toLocaleString()} / ${d.limit.toLocaleString()}`);
    if (window.resetsAt) parts.push(`resets ${when(window.resetsAt)}`);
    numbers.textContent = parts.join(" · ") || "no limit";
    item.append(title, bar, numbers);
    container.append(item);
  }
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = cell;
    tr.append(td);
  }
  return tr;
}

export function renderAdmin(principalsBody, modelsBody, overview) {
  principalsBody.replaceChildren(
    ...overview.principals.map((p) =>
      row([p.principal, p.today.total_tokens.toLocaleString(), p.month.total_tokens.toLocaleString(), p.month.cost_usd]),
    ),
  );
  modelsBody.replaceChildren(
    ...overview.models.map((m) =>
      row([m.model || "(default)", String(m.requests), m.total_tokens.toLocaleString(), m.cost_usd]),
    ),
  );
}
