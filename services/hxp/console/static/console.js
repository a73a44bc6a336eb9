"use strict";
// The console's pages. Every text from the server goes into the page as text (textContent), never as HTML.
(function () {
  const csrf = document.querySelector('meta[name="hxp-csrf"]').content;
  const main = document.getElementById("main");
  const COLORS = ["#2f6db3", "#e07b39", "#3a9a5b", "#b5455a", "#7d5bb5", "#c2a033", "#3f9fb0", "#8a6d4f"];

  // --- helpers ---------------------------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else if (name === "class") el.className = value;
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
    for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return el;
  }

  async function api(path, options) {
    const init = {method: (options && options.method) || "GET", credentials: "same-origin",
                  headers: {"Accept": "application/json"}};
    if (init.method !== "GET") {
      init.headers["X-CSRF-Token"] = csrf;
      if (options.body !== undefined) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(options.body);
      }
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      location.assign("/console/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
      throw new Error("The console session has ended: sign in again");
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
    return data;
  }

  const num = (v, digits) => v === null || v === undefined ? "—"
    : Number(v).toLocaleString("en-US", {maximumFractionDigits: digits === undefined ? 0 : digits});
  const ms = (v) => v === null || v === undefined ? "—" : num(v) + " ms";
  const list = (items, none) => items && items.length ? items.join(", ") : none;
  const time = (iso) => iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC") : "—";
  const badge = (ok, yes, no) => h("span", {class: "badge " + (ok ? "up" : "down")}, ok ? yes : no);

  function table(columns, rows, attrs) {
    return h("div", {class: "scroll"}, h("table", attrs || {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", {class: c.num ? "num" : null}, c.label)))),
      h("tbody", {}, rows.length ? rows.map((row) => h("tr", row.attrs || {},
        columns.map((c) => h("td", {class: c.num ? "num" : null, "data-col": c.key || null}, c.cell(row.data))))) :
        h("tr", {}, h("td", {colspan: columns.length, class: "note"}, "Nothing to show.")))));
  }

  function section(title, ...content) {
    return h("section", {}, h("h2", {}, title), content);
  }

  function setStatus(text, isError) {
    let status = document.getElementById("status");
    if (!status) {
      status = h("p", {id: "status"});
      main.prepend(status);
    }
    status.className = isError ? "error" : "note";
    status.textContent = text;
  }

  function render(title, ...content) {
    main.replaceChildren(h("h1", {}, title), h("p", {id: "status", class: "note"}), ...content);
  }

  // --- charts: stacked bars per day, drawn as SVG ---------------------------------------------------------
  function barChart(title, metric, days, groups) {
    const W = 760, H = 230, L = 56, R = 12, T = 14, B = 44;
    const totals = days.map((_, i) => groups.reduce((sum, g) => sum + g[metric][i], 0));
    const top = niceMax(Math.max(4, ...totals));  // counts: at least 0..4 in whole steps
    const step = (W - L - R) / Math.max(1, days.length);
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const chart = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "data-metric": metric,
                              "data-total": totals.reduce((a, b) => a + b, 0)});
    chart.append(svg("title", {}, title));
    for (let i = 0; i <= 4; i++) {
      const v = top * i / 4;
      chart.append(svg("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid"}),
                   svg("text", {x: L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end"}, short(v)));
    }
    const every = Math.ceil(days.length / 12);
    days.forEach((day, i) => {
      let base = 0;
      groups.forEach((g, gi) => {
        const value = g[metric][i];
        if (!value) return;
        chart.append(svg("rect", {x: L + i * step + step * 0.15, width: Math.max(1, step * 0.7), y: y(base + value),
                                  height: Math.max(0.5, y(base) - y(base + value)), fill: COLORS[gi % COLORS.length],
                                  "data-group": g.name, "data-day": day, "data-value": value},
                         svg("title", {}, `${day} · ${g.name}: ${num(value)}`)));
        base += value;
      });
      if (i % every === 0) {
        chart.append(svg("text", {x: L + i * step + step / 2, y: H - B + 16, class: "axis", "text-anchor": "middle"},
                         day.slice(5)));
      }
    });
    const legend = h("ul", {class: "legend"}, groups.map((g, gi) =>
      h("li", {}, h("span", {class: "swatch swatch-" + (gi % COLORS.length)}), g.name)));
    return h("figure", {class: "chart-box"}, h("figcaption", {}, title), chart, legend);
  }

  function niceMax(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function short(v) {
    if (v >= 1e6) return num(v / 1e6, 1) + "M";
    if (v >= 1e3) return num(v / 1e3, 1) + "k";
    return num(v, 1);
  }

  // --- overview ------------------------------------------------------------------------------------------
  async function overview() {
    async function refresh() {
      let wait = 5;
      try {
        const data = await api("/console/api/overview");
        drawOverview(data);
        setStatus(`Updated ${time(data.generated_at)} · refreshes every ${data.refresh_s} s · profile ${data.profile}`);
        wait = data.refresh_s;
      } catch (error) {
        setStatus(error.message, true);
      }
      setTimeout(refresh, wait * 1000);
    }
    await refresh();
  }

  function drawOverview(data) {
    const models = data.models.map((m) => ({data: m, attrs: {"data-model": m.name, class: m.healthy ? "" : "alarm"}}));
    const engines = [
      {label: "Model", cell: (m) => h("strong", {}, m.name)},
      {label: "Task", cell: (m) => m.task},
      {label: "Status", key: "status", cell: (m) => badge(m.healthy, "up", "down")},
      {label: "Engines up", num: true, cell: (m) => `${m.replicas.filter((r) => r.healthy).length} / ${m.replicas.length}`},
      {label: "Served names", key: "served", cell: (m) => list(m.served_names, "—")},
      {label: "Running", num: true, key: "running", cell: (m) => num(m.running)},
      {label: "Waiting", num: true, key: "waiting", cell: (m) => num(m.waiting)},
      {label: "Engine memory", num: true, cell: (m) => m.engine && m.engine.memory_gb !== null ? num(m.engine.memory_gb, 2) + " GB" : "—"},
      {label: "Engine CPU", num: true, cell: (m) => m.engine && m.engine.cpu_percent !== null ? num(m.engine.cpu_percent) + " %" : "—"},
      {label: "Problem", cell: (m) => list(m.replicas.filter((r) => r.error).map((r) => r.error), "")},
    ];
    const traffic = (window) => [
      {label: "Model", cell: (m) => m.name},
      {label: "Requests/min", num: true, key: "rpm", cell: (m) => num(m.windows[window].requests_per_min, 2)},
      {label: "Errors/min", num: true, key: "epm", cell: (m) => num(m.windows[window].errors_per_min, 2)},
      {label: "Latency p50", num: true, cell: (m) => ms(m.windows[window].latency_p50_ms)},
      {label: "Latency p95", num: true, cell: (m) => ms(m.windows[window].latency_p95_ms)},
      {label: "TTFT p50", num: true, cell: (m) => ms(m.windows[window].ttft_p50_ms)},
      {label: "TTFT p95", num: true, cell: (m) => ms(m.windows[window].ttft_p95_ms)},
      {label: "Output tokens/s", num: true, cell: (m) => num(m.windows[window].tokens_per_s, 2)},
      {label: "Requests", num: true, key: "requests", cell: (m) => num(m.windows[window].requests)},
    ];
    const s = data.stores;
    const store = (name, component, detail) => h("div", {class: "card store", "data-store": name},
      h("h3", {}, name, " ", "healthy" in component ? badge(component.healthy, "up", "down") : h("span", {class: "badge off"}, component.mode || "off")),
      h("p", {class: "note"}, detail),
      component.latency_ms !== undefined ? h("p", {}, "answered in ", ms(component.latency_ms)) : null,
      component.error ? h("p", {class: "error"}, component.error) : null);
    const collections = s.qdrant.collections || {};
    render("Overview",
      section("Models", table(engines, models, {id: "models"})),
      section("Last 5 minutes", table(traffic("5m"), models, {id: "traffic-5m"})),
      section("Last 60 minutes", table(traffic("60m"), models, {id: "traffic-60m"})),
      section("Stores", h("div", {class: "cards"},
        store("Database", s.database, s.database.url),
        store("Redis", s.redis, s.redis.url || "in-process: limits and cache in this worker, one replica"),
        store("Qdrant", s.qdrant, (s.qdrant.url || s.qdrant.path) + " · " +
              (Object.entries(collections).map(([c, n]) => `${c}: ${num(n)} documents`).join(", ") || "no collections")),
        h("div", {class: "card store", "data-store": "usage"}, h("h3", {}, "Usage log"),
          h("p", {class: "note"}, "rows waiting to be written"), h("p", {}, num(data.usage_backlog))))));
  }

  // --- API keys -----------------------------------------------------------------------------------------
  async function keys() {
    const data = await api("/console/api/keys");
    const secretBox = h("div", {id: "secret-box", class: "card secret", hidden: true});
    const form = keyForm(data, secretBox);
    const columns = [
      {label: "Alias", key: "alias", cell: (k) => h("strong", {}, k.alias)},
      {label: "Owner", key: "owner", cell: (k) => k.owner || "—"},
      {label: "Models", cell: (k) => list(k.models, "all")},
      {label: "Reads", cell: (k) => list(k.read_collections.map((c) => c === "*" ? "all" : c), "none")},
      {label: "Writes", cell: (k) => list(k.write_collections.map((c) => c === "*" ? "all" : c), "none")},
      {label: "RPM", num: true, cell: (k) => num(k.rpm_limit)},
      {label: "TPM", num: true, cell: (k) => num(k.tpm_limit)},
      {label: "Expires", cell: (k) => time(k.expires_at)},
      {label: "Created", cell: (k) => time(k.created_at)},
      {label: "Status", key: "status", cell: (k) => k.revoked_at ? h("span", {class: "badge down"}, "revoked " + time(k.revoked_at))
        : expired(k) ? h("span", {class: "badge down"}, "expired") : h("span", {class: "badge up"}, "active")},
      {label: "Last used", key: "last-used", cell: (k) => time(k.last_used)},
      {label: `Requests (${data.recent_hours} h)`, num: true, key: "recent", cell: (k) => num(k.recent_requests)},
      {label: "", cell: (k) => k.revoked_at || expired(k) ? "" : actions(k, secretBox)},
    ];
    const rows = data.data.slice().reverse().map((k) => ({data: k, attrs: {"data-key": k.key_id, "data-alias": k.alias,
                                                                           class: k.revoked_at ? "muted" : ""}}));
    render("API keys", secretBox, section("New key", form), section(`Keys (${data.data.length})`, table(columns, rows, {id: "keys"})));
  }

  const expired = (k) => k.expires_at && new Date(k.expires_at) <= new Date();

  function showSecret(box, key, verb) {
    box.replaceChildren(
      h("h2", {}, `Key '${key.alias}' ${verb}`),
      h("p", {}, "Copy the secret now: it is shown this once and cannot be read again."),
      h("p", {}, h("code", {id: "new-secret"}, key.key)),
      h("button", {type: "button", onclick: () => navigator.clipboard && navigator.clipboard.writeText(key.key)}, "Copy"),
      " ",
      h("button", {type: "button", class: "quiet", onclick: () => keys()}, "Done"));
    box.hidden = false;
  }

  function actions(key, secretBox) {
    const confirmRevoke = h("button", {type: "button", class: "danger", hidden: true, "data-action": "confirm-revoke",
      onclick: async () => {
        try {
          await api(`/console/api/keys/${encodeURIComponent(key.key_id)}/revoke`, {method: "POST"});
          await keys();
          setStatus(`Key '${key.alias}' revoked.`);
        } catch (error) { setStatus(error.message, true); }
      }}, "Revoke now");
    const revoke = h("button", {type: "button", class: "quiet", "data-action": "revoke",
      onclick: () => { revoke.hidden = true; confirmRevoke.hidden = false; }}, "Revoke");
    const rotate = h("button", {type: "button", class: "quiet", "data-action": "rotate", onclick: async () => {
      try {
        const rotated = await api(`/console/api/keys/${encodeURIComponent(key.key_id)}/rotate`, {method: "POST"});
        showSecret(secretBox, rotated, "has a new secret (the old one no longer works)");
      } catch (error) { setStatus(error.message, true); }
    }}, "Rotate");
    return h("span", {class: "actions"}, rotate, " ", revoke, confirmRevoke);
  }

  function checkboxes(name, options, checked) {
    return h("span", {class: "choices"}, options.map((o) =>
      h("label", {}, h("input", {type: "checkbox", name, value: o.value, checked: checked.includes(o.value)}), o.label)));
  }

  function keyForm(data, secretBox) {
    const collections = [{value: "*", label: "all"}].concat(data.collections.map((c) => ({value: c, label: c})));
    const form = h("form", {id: "new-key", class: "grid-form"},
      h("label", {}, "Alias", h("input", {name: "alias", required: true, maxlength: 100, autocomplete: "off"})),
      h("label", {}, "Owner", h("input", {name: "owner", maxlength: 100, autocomplete: "off"})),
      h("label", {}, "Requests/min", h("input", {name: "rpm", type: "number", min: 1})),
      h("label", {}, "Tokens/min", h("input", {name: "tpm", type: "number", min: 1})),
      h("label", {}, "Expires in days", h("input", {name: "days", type: "number", min: 1, step: "any"})),
      h("fieldset", {}, h("legend", {}, "Models (none ticked: all)"),
        checkboxes("models", data.models.map((m) => ({value: m, label: m})), [])),
      h("fieldset", {}, h("legend", {}, "Collections it may read"), checkboxes("read", collections, ["*"])),
      h("fieldset", {}, h("legend", {}, "Collections it may write"), checkboxes("write", collections, [])),
      h("div", {}, h("button", {type: "submit"}, "Create key")));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const values = new FormData(form);
      const body = {alias: values.get("alias"), models: values.getAll("models"),
                    read_collections: values.getAll("read"), write_collections: values.getAll("write")};
      if (values.get("owner")) body.owner = values.get("owner");
      for (const name of ["rpm", "tpm"]) if (values.get(name)) body[name] = Number(values.get(name));
      if (values.get("days")) body.days = Number(values.get("days"));
      try {
        const created = await api("/console/api/keys", {method: "POST", body});
        await keys();
        showSecret(document.getElementById("secret-box"), created, "created");
      } catch (error) { setStatus(error.message, true); }
    });
    return form;
  }

  // --- usage -----------------------------------------------------------------------------------------------
  async function usage() {
    const params = new URLSearchParams(location.search);
    const data = await api("/console/api/usage?" + params.toString());
    const form = h("form", {id: "range", class: "inline-form"},
      h("label", {}, "From", h("input", {type: "date", name: "since", value: data.since})),
      h("label", {}, "To", h("input", {type: "date", name: "until", value: data.until})),
      h("label", {}, "Per", h("select", {name: "by"}, ["model", "key", "day"].map((b) =>
        h("option", {value: b, selected: b === data.by}, b)))),
      h("button", {type: "submit"}, "Show"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      location.assign("/console/usage?" + new URLSearchParams(new FormData(form)).toString());
    });
    const query = new URLSearchParams({since: data.since, until: data.until, by: data.by});
    const t = data.totals;
    const groups = data.series.groups;
    const columns = [{label: data.by === "key" ? "Key" : data.by === "day" ? "Day (UTC)" : "Model", key: "group",
                      cell: (r) => r.group}].concat([
      ["requests", "Requests"], ["errors", "Errors"], ["prompt_tokens", "Prompt tokens"],
      ["completion_tokens", "Completion tokens"], ["total_tokens", "Total tokens"], ["avg_latency_ms", "Avg latency"],
    ].map(([key, label]) => ({label, key, num: true, cell: (r) => key === "avg_latency_ms" ? ms(r[key]) : num(r[key])})));
    render("Usage", form,
      h("p", {class: "summary"}, `${data.since} to ${data.until} (UTC): `, h("strong", {id: "total-requests"}, num(t.requests)),
        " requests, ", h("strong", {}, num(t.errors)), " errors, ", h("strong", {}, num(t.total_tokens)), " tokens. ",
        h("a", {id: "csv", href: "/console/api/usage.csv?" + query.toString(), download: ""}, "Download CSV")),
      h("div", {class: "charts"},
        barChart(`Requests per day, per ${data.series.stacked_by}`, "requests", data.days, groups),
        barChart(`Tokens per day, per ${data.series.stacked_by}`, "tokens", data.days, groups),
        barChart(`Errors per day, per ${data.series.stacked_by}`, "errors", data.days, groups)),
      section(`Per ${data.by}`, table(columns, data.rows.map((r) => ({data: r, attrs: {"data-group": r.group}})), {id: "usage"})));
  }

  // --- configuration ------------------------------------------------------------------------------------
  async function configuration() {
    const data = await api("/console/api/configuration");
    const v = data.validation;
    const verdict = (name, result) => h("p", {class: result.valid && result.current !== false ? "ok" : "error",
                                             "data-validation": name}, h("strong", {}, name + ": "), result.message);
    const models = [
      {label: "Model", cell: (m) => h("strong", {}, m.name)},
      {label: "Task", cell: (m) => m.task},
      {label: "Port", num: true, cell: (m) => m.port},
      {label: "Source", cell: (m) => m.source},
      {label: "Backends", cell: (m) => list(m.backends, "—")},
      {label: "Aliases", cell: (m) => list(m.aliases, "—")},
      {label: "Devices", cell: (m) => list(m.devices.map(String), "—")},
      {label: "Timeout", num: true, cell: (m) => num(m.limits.timeout_s) + " s"},
      {label: "Max concurrent", num: true, cell: (m) => num(m.limits.max_concurrent_requests)},
      {label: "Retries", num: true, cell: (m) => num(m.limits.retries)},
      {label: "Fallbacks", cell: (m) => list(m.limits.fallbacks, "—")},
      {label: "Cache", cell: (m) => m.limits.cache ? "on" : "off"},
      {label: "Context", num: true, cell: (m) => num(m.vllm.max_model_len)},
      {label: "dtype", cell: (m) => m.vllm.dtype},
      {label: "Target avg / p95", num: true, cell: (m) => `${ms(m.targets.avg_latency_ms)} / ${ms(m.targets.p95_latency_ms)}`},
      {label: "Target rps", num: true, cell: (m) => num(m.targets.throughput_rps, 3)},
      {label: "Target memory", num: true, cell: (m) => num(m.targets.memory_gb) + " GB"},
    ];
    const pairs = (object) => table([{label: "Setting", cell: (r) => r[0]}, {label: "Value", cell: (r) => String(r[1])}],
                                    Object.entries(object).map((e) => ({data: e})));
    render("Configuration",
      section("Validation", verdict("Catalogue " + data.file, v.catalogue), verdict("Vector collections", v.collections)),
      section(`Profile ${data.profile.name}`, pairs(data.profile)),
      section("Models", table(models, data.models.map((m) => ({data: m, attrs: {"data-model": m.name}})), {id: "catalogue"})),
      section("Vector collections", table([
        {label: "Collection", cell: (c) => c.name}, {label: "Embedding model", cell: (c) => c.embedding_model},
        {label: "Vector size", num: true, cell: (c) => c.vector_size}, {label: "Distance", cell: (c) => c.distance},
        {label: "Description", cell: (c) => c.description}], data.collections.map((c) => ({data: c})))),
      section("Gateway settings", pairs(data.gateway)));
  }

  // --- audit -------------------------------------------------------------------------------------------
  async function audit() {
    const params = new URLSearchParams(location.search);
    const fields = [["actor", "Actor"], ["action", "Action"], ["target", "Target"]];
    const form = h("form", {id: "filters", class: "inline-form"},
      fields.map(([name, label]) => h("label", {}, label, h("input", {type: "text", name, value: params.get(name) || ""}))),
      h("label", {}, "From", h("input", {type: "date", name: "since", value: params.get("since") || ""})),
      h("label", {}, "To", h("input", {type: "date", name: "until", value: params.get("until") || ""})),
      h("button", {type: "submit"}, "Search"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const query = new URLSearchParams();
      for (const [name, value] of new FormData(form)) if (value) query.set(name, value);
      location.assign("/console/audit?" + query.toString());
    });
    render("Audit", form);
    const data = await api("/console/api/audit?" + params.toString());
    const columns = [
      {label: "#", num: true, key: "seq", cell: (e) => e.seq},
      {label: "Time (UTC)", cell: (e) => time(e.at)},
      {label: "Actor", key: "actor", cell: (e) => e.actor},
      {label: "Client", cell: (e) => e.client},
      {label: "Action", key: "action", cell: (e) => e.action},
      {label: "Target", key: "target", cell: (e) => e.target},
      {label: "Outcome", key: "outcome", cell: (e) => e.outcome},
      {label: "Count", num: true, cell: (e) => num(e.count)},
      {label: "Details", cell: (e) => JSON.stringify(e.details)},
    ];
    main.append(h("p", {class: "summary"}, h("strong", {id: "audit-count"}, num(data.data.length)), " events (newest first). ",
                  h("a", {id: "csv", href: "/console/api/audit.csv?" + params.toString(), download: ""}, "Download CSV")),
                section("Events", table(columns, data.data.map((e) => ({data: e, attrs: {"data-seq": e.seq}})), {id: "audit"})));
  }

  // --- start -------------------------------------------------------------------------------------------
  document.getElementById("sign-out").addEventListener("click", async () => {
    try {
      await api("/console/sign-out", {method: "POST"});
    } finally {
      location.assign("/console/sign-in");
    }
  });
  const page = document.body.dataset.page;
  const link = document.querySelector(`[data-nav="${page}"]`);
  if (link) link.setAttribute("aria-current", "page");
  const pages = {overview, keys, usage, configuration, audit};
  pages[page]().catch((error) => setStatus(error.message, true));
})();
