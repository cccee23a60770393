// The ken-serve console: plain browser JavaScript over the service's own API (no build step, no other hosts).
// Everything shown from the server (task names, labels, messages) goes through textContent, never innerHTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { tasks: [], backbone: null, samples: [] };
  const CLASSIFICATION = "sequence-classification";
  const SAMPLES_KEPT = 60; // two minutes of figures at one sample every 2 s

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function setStatus(id, text, isError) {
    const node = $(id);
    node.textContent = text;
    node.classList.toggle("error", Boolean(isError));
  }

  function headers(admin, extra) {
    const token = (admin ? $("admin-token") : $("api-token")).value.trim();
    return Object.assign(token ? { Authorization: "Bearer " + token } : {}, extra || {});
  }

  // fetch + the service's error shapes ({"detail": ...} on v1, {"error": ...} on v2) -> an Error with the message.
  async function call(path, options) {
    const opts = options || {};
    const init = { method: opts.method || "GET", headers: headers(opts.admin, opts.headers) };
    if (opts.json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.json);
    } else if (opts.body !== undefined) {
      init.body = opts.body;
    }
    const response = await fetch(path, init);
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try {
        const body = await response.json();
        const detail = body.detail !== undefined ? body.detail : body.error;
        message = response.status + ": " + (typeof detail === "string" ? detail : JSON.stringify(detail));
      } catch (ignored) { /* not JSON: keep the status line */ }
      throw new Error(message);
    }
    return opts.raw ? response : response.json();
  }

  function humanBytes(count) {
    const units = ["B", "KB", "MB", "GB"];
    let value = count, unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return (unit === 0 ? value : value.toFixed(1)) + " " + units[unit];
  }

  function keptPercent(task) {
    if (!state.backbone || !state.backbone.parameters) return "";
    return (100 * task.kept_entries / state.backbone.parameters).toFixed(3);
  }

  // ---- header: backbone and readiness ---------------------------------------------------------------------------

  async function loadBackbone() {
    try {
      state.backbone = await call("/v1/backbone");
      const b = state.backbone;
      $("backbone").textContent = "backbone: " + b.name + " · " + b.parameters.toLocaleString() + " parameters · "
        + b.device + " " + b.dtype + " · max " + b.max_length + " tokens";
    } catch (error) {
      $("backbone").textContent = "backbone: " + error.message;
    }
  }

  async function loadReadiness() {
    const pill = $("ready");
    try {
      const response = await fetch("/readyz");
      const body = await response.json();
      pill.textContent = body.ready ? "ready" : "not ready: " + (body.detail || "");
      pill.className = "pill " + (body.ready ? "ok" : "bad");
    } catch (error) {
      pill.textContent = "unreachable";
      pill.className = "pill bad";
    }
  }

  // ---- tasks ----------------------------------------------------------------------------------------------------

  async function loadTasks() {
    try {
      const listing = await call("/v1/subnetworks");
      state.tasks = listing.subnetworks;
      renderTasks();
      setStatus("tasks-status", state.tasks.length ? state.tasks.length + " task(s)" : "no tasks stored yet: upload one");
    } catch (error) {
      setStatus("tasks-status", error.message, true);
    }
  }

  function renderTasks() {
    const body = $("task-table").querySelector("tbody");
    body.replaceChildren();
    for (const task of state.tasks) {
      const row = element("tr");
      row.dataset.task = task.task;
      const labels = task.labels.length > 6 ? task.labels.slice(0, 6).join(", ") + ", … (" + task.labels.length + ")"
        : task.labels.join(", ");
      const cells = [task.task, task.task_type, task.method, task.k, keptPercent(task), humanBytes(task.bytes),
        labels, task.version];
      cells.forEach((value, index) => row.append(element("td", value, index === 0 ? "task-name" : undefined)));
      const actions = element("td");
      const show = element("button", "images");
      show.type = "button";
      show.addEventListener("click", () => { $("viz-task").value = task.task; showImages(); });
      const remove = element("button", "delete", "danger");
      remove.type = "button";
      remove.addEventListener("click", () => deleteTask(task.task, remove));
      actions.append(show, " ", remove);
      row.append(actions);
      body.append(row);
    }
    fillTaskSelect($("play-task"));
    fillTaskSelect($("viz-task"));
  }

  function fillTaskSelect(select) {
    const previous = select.value;
    select.replaceChildren(...state.tasks.map((task) => {
      const option = element("option", task.task + " (" + task.task_type + ")");
      option.value = task.task;
      return option;
    }));
    if (state.tasks.some((task) => task.task === previous)) select.value = previous;
  }

  // Deleting asks for a second click on the same button within 4 s (no modal dialogs).
  async function deleteTask(name, button) {
    if (button.dataset.armed !== "yes") {
      button.dataset.armed = "yes";
      button.textContent = "really delete?";
      setTimeout(() => { button.dataset.armed = ""; button.textContent = "delete"; }, 4000);
      return;
    }
    try {
      const manifest = await call("/v1/subnetworks/" + encodeURIComponent(name), { method: "DELETE", admin: true });
      await loadTasks();
      setStatus("tasks-status", "deleted " + manifest.task + " (was version " + manifest.version + ")");
    } catch (error) {
      setStatus("tasks-status", "delete " + name + ": " + error.message, true);
    }
  }

  // ---- playground -----------------------------------------------------------------------------------------------

  async function sendPlayground() {
    const name = $("play-task").value;
    const text = $("play-text").value;
    const task = state.tasks.find((candidate) => candidate.task === name);
    const result = $("play-result");
    result.replaceChildren();
    if (!task) { setStatus("play-status", "choose a task", true); return; }
    if (!text.trim()) { setStatus("play-status", "type a text to send", true); return; }
    setStatus("play-status", "sending…");
    try {
      if (task.task_type === CLASSIFICATION) {
        const answer = await call("/v1/predict",
          { method: "POST", json: { task: name, inputs: [text], top_k: task.labels.length } });
        showLabels(answer);
      } else {
        // Other task types answer on their own routes; KServe V2 infer serves every type with its outputs.
        const answer = await call("/v2/models/" + encodeURIComponent(name) + "/infer", {
          method: "POST",
          json: { inputs: [{ name: "text", shape: [1], datatype: "BYTES", data: [text] }] },
        });
        result.append(element("pre", JSON.stringify(answer.outputs, null, 1), "raw"));
        setStatus("play-status", name + " v" + answer.model_version + " (" + task.task_type + ", via /v2)");
      }
    } catch (error) {
      setStatus("play-status", error.message, true);
    }
  }

  function showLabels(answer) {
    const prediction = answer.predictions[0];
    const result = $("play-result");
    const top = prediction.labels[0];
    const headline = element("p", "", "headline");
    headline.append("top label: ", element("b", top.label), " (" + top.score.toFixed(3) + ")");
    headline.querySelector("b").id = "play-top-label";
    result.append(headline);
    const list = element("ol", undefined, "scores");
    for (const entry of prediction.labels) {
      const item = element("li");
      const bar = element("span", undefined, "bar");
      bar.style.width = Math.max(1, Math.round(entry.score * 100)) + "%";
      item.append(element("span", entry.label, "label"), bar, element("span", entry.score.toFixed(3), "score"));
      list.append(item);
    }
    result.append(list);
    setStatus("play-status", answer.task + " v" + answer.version + (prediction.truncated ? " · input truncated" : ""));
  }

  // ---- upload ---------------------------------------------------------------------------------------------------

  async function upload() {
    const name = $("upload-task").value.trim();
    const file = $("upload-file").files[0];
    if (!name) { setStatus("upload-status", "name the task", true); return; }
    if (!file) { setStatus("upload-status", "choose a .safetensors file (ken extract writes one)", true); return; }
    setStatus("upload-status", "uploading " + humanBytes(file.size) + "…");
    try {
      const response = await call("/v1/subnetworks/" + encodeURIComponent(name), {
        method: "PUT", admin: true, body: file, headers: { "Content-Type": "application/octet-stream" }, raw: true,
      });
      const manifest = await response.json();
      const what = response.status === 201 ? "stored as version " : "unchanged: already version ";
      setStatus("upload-status", manifest.task + " " + what + manifest.version);
      await loadTasks();
    } catch (error) {
      setStatus("upload-status", error.message, true);
    }
  }

  // ---- KEN_viz --------------------------------------------------------------------------------------------------

  async function showImages() {
    const name = $("viz-task").value;
    const gallery = $("viz-images");
    if (!name) { setStatus("viz-status", "choose a task", true); return; }
    setStatus("viz-status", "rendering " + name + "…");
    for (const img of gallery.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    gallery.replaceChildren();
    try {
      const index = await call("/console/viz/" + encodeURIComponent(name));
      for (const image of index.images) {
        const png = await call(image.url, { raw: true });
        const figure = element("figure");
        const img = element("img");
        img.alt = name + ": " + image.description;
        img.dataset.view = image.view;
        img.src = URL.createObjectURL(await png.blob());
        figure.append(img, element("figcaption", image.view + ": " + image.description));
        gallery.append(figure);
      }
      setStatus("viz-status", index.task + " v" + index.version + ": " + index.images.length + " views");
    } catch (error) {
      setStatus("viz-status", error.message, true);
    }
  }

  // ---- live figures from /metrics -------------------------------------------------------------------------------

  // Prometheus text -> {series name: total over its label sets}, with tier-labelled series kept apart.
  function parseMetrics(text) {
    const totals = {};
    for (const line of text.split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
      if (!match) continue;
      const value = Number(match[3]);
      if (!Number.isFinite(value)) continue;
      const tier = match[2] && match[2].match(/tier="([^"]*)"/);
      const key = match[1] + (tier ? "/" + tier[1] : "");
      totals[key] = (totals[key] || 0) + value;
    }
    return totals;
  }

  function sum(totals, prefix) {
    return Object.keys(totals).filter((key) => key.startsWith(prefix)).reduce((acc, key) => acc + totals[key], 0);
  }

  async function sampleMetrics() {
    try {
      const response = await fetch("/metrics");
      if (!response.ok) throw new Error(response.status + " from /metrics");
      const totals = parseMetrics(await response.text());
      state.samples.push({
        time: Date.now() / 1000,
        swaps: totals.ken_swaps_total || 0,
        hits: sum(totals, "ken_cache_hits_total/"),
        misses: sum(totals, "ken_cache_misses_total/"),
        latencySum: totals.ken_inference_duration_seconds_sum || 0,
        latencyCount: totals.ken_inference_duration_seconds_count || 0,
      });
      if (state.samples.length > SAMPLES_KEPT + 1) state.samples.shift();
      drawLive();
      setStatus("live-status", "");
    } catch (error) {
      setStatus("live-status", error.message, true);
    }
  }

  function drawLive() {
    const s = state.samples;
    const last = s[s.length - 1];
    $("live-swaps").textContent = last.swaps.toLocaleString();
    const lookups = last.hits + last.misses;
    $("live-cache").textContent = lookups ? (100 * last.hits / lookups).toFixed(1) + "%" : "–";
    $("live-requests").textContent = last.latencyCount.toLocaleString();
    const swaps = [], cache = [], latency = [];
    for (let i = 1; i < s.length; i += 1) {
      const seconds = Math.max(s[i].time - s[i - 1].time, 1e-3);
      swaps.push((s[i].swaps - s[i - 1].swaps) / seconds);
      const hits = s[i].hits - s[i - 1].hits, all = hits + s[i].misses - s[i - 1].misses;
      cache.push(all > 0 ? 100 * hits / all : null);
      const count = s[i].latencyCount - s[i - 1].latencyCount;
      latency.push(count > 0 ? 1000 * (s[i].latencySum - s[i - 1].latencySum) / count : null);
    }
    drawChart($("chart-swaps"), swaps, "#3b528b");
    drawChart($("chart-cache"), cache, "#21918c", 100);
    drawChart($("chart-latency"), latency, "#b5367a");
  }

  // A line over the last SAMPLES_KEPT intervals; gaps where nothing happened; the scale's top written in the corner.
  function drawChart(canvas, values, colour, fixedTop) {
    const context = canvas.getContext("2d");
    const width = canvas.width, height = canvas.height, pad = 16;
    context.clearRect(0, 0, width, height);
    context.strokeStyle = "#ccc";
    context.strokeRect(0.5, 0.5, width - 1, height - 1);
    const present = values.filter((value) => value !== null);
    const top = fixedTop || Math.max(1e-9, ...present) * 1.1;
    context.fillStyle = "#666";
    context.font = "11px sans-serif";
    context.fillText(present.length ? top.toPrecision(3) : "no data yet", 4, 12);
    context.strokeStyle = colour;
    context.lineWidth = 2;
    context.beginPath();
    let drawing = false;
    values.forEach((value, index) => {
      if (value === null) { drawing = false; return; }
      const x = width - (values.length - index) * ((width - 2) / SAMPLES_KEPT);
      const y = height - pad / 2 - (value / top) * (height - pad * 1.5);
      if (drawing) context.lineTo(x, y); else context.moveTo(x, y);
      drawing = true;
    });
    context.stroke();
  }

  // ---- wiring ---------------------------------------------------------------------------------------------------

  function start() {
    $("tasks-refresh").addEventListener("click", loadTasks);
    $("play-send").addEventListener("click", sendPlayground);
    $("upload-send").addEventListener("click", upload);
    $("viz-show").addEventListener("click", showImages);
    for (const id of ["api-token", "admin-token"]) $(id).addEventListener("change", () => { loadBackbone().then(loadTasks); });
    loadReadiness();
    loadBackbone().then(loadTasks);
    sampleMetrics();
    setInterval(sampleMetrics, 2000);
    setInterval(loadReadiness, 10000);
  }

  start();
})();
