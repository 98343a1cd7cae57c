// The search page: upload or drop an image, or click a result, to search; results as thumbnails.
// Plain DOM, no framework and no build step; every text from the server goes in as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, last: null, objectUrl: null };

function className(label) {
  if (label === null || label === undefined) return "label unknown";
  const names = state.info && state.info.classes;
  if (!names || names[label] === undefined) return `label ${label}`;
  return names[label] === String(label) ? `class ${label}` : `${names[label]} (${label})`;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

function options() {
  return { k: $("k").value, fine: $("fine").checked ? "1" : "0", radius: $("radius").value };
}

async function call(url, init) {
  const response = await fetch(url, init);
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function showFacts(info) {
  const model = info.model || {};
  const name = model.run || model.weights || "no model (search by id or code)";
  const parts = [`${info.images.toLocaleString()} images`, `${info.bits}-bit codes`,
                 info.fc7 ? `fc7 ${info.fc7}` : "no fc7", `model: ${name}`,
                 `index: ${info.index}`];
  if (info.classes) parts.push(`${info.classes.length} classes`);
  $("facts").textContent = parts.join(" · ");
  $("k").max = info.max_k;
  $("radius").max = info.bits;
  $("radius").value = info.default_radius;
  $("fine").disabled = !info.fine;
  if (!info.upload) $("drop").textContent = "This service has no model: click a result to search.";
}

function showQuery(answer, imageUrl) {
  const query = answer.query;
  $("query").hidden = false;
  $("query-image").src = imageUrl;
  const who = query.kind === "id" ? `item ${query.id}` :
    query.kind === "image" ? (query.filename || "uploaded image") : `code ${query.code_hex}`;
  $("query-caption").textContent = `${who} · ${className(query.label)}`;
  let text = answer.fine ? `coarse-to-fine, radius ${answer.radius}: ` +
    `${answer.within_radius} within the radius` : "Hamming ranking";
  text += ` · top ${answer.results.length} · code ${query.code}`;
  $("summary").textContent = text;
  if (answer.fine && answer.fallback) {
    const note = document.createElement("span");
    note.className = "notice";
    note.dataset.testid = "fallback";
    note.textContent = ` · fewer than ${answer.k} within the radius: ` +
      `the pool is the Hamming top ${answer.k}`;
    $("summary").appendChild(note);
  }
}

function showResults(answer) {
  const grid = $("results");
  grid.replaceChildren();
  const queryLabel = answer.query.label;
  answer.results.forEach((hit, i) => {
    const tile = document.createElement("figure");
    tile.className = "result";
    if (queryLabel !== null && hit.label !== null) {
      tile.classList.add(hit.label === queryLabel ? "match" : "miss");
    }
    tile.dataset.id = hit.id;
    tile.dataset.testid = "result";
    tile.title = hit.path;
    const img = document.createElement("img");
    img.src = `/api/image/${encodeURIComponent(hit.id)}`;
    img.alt = `item ${hit.id}`;
    // an item whose path is no image file here (e.g. a database record) has no thumbnail
    img.addEventListener("error", () => tile.classList.add("nopic"));
    const caption = document.createElement("figcaption");
    const line1 = document.createElement("div");
    line1.textContent = `#${i + 1} · dH ${hit.distance}` +
      (hit.fc7_distance !== undefined ? ` · fc7 ${hit.fc7_distance.toFixed(2)}` : "");
    const line2 = document.createElement("div");
    line2.className = "label";
    line2.textContent = className(hit.label);
    caption.append(line1, line2);
    tile.append(img, caption);
    tile.addEventListener("click", () => { location.hash = `id=${hit.id}`; });
    grid.appendChild(tile);
  });
}

async function run(describe, fetchAnswer, imageUrl) {
  setStatus(`searching ${describe}...`);
  try {
    const started = performance.now();
    const answer = await fetchAnswer();
    showQuery(answer, imageUrl(answer));
    showResults(answer);
    setStatus(`${answer.results.length} results in ${Math.round(performance.now() - started)} ms`);
  } catch (err) {
    setStatus(err.message, true);
  }
}

function searchId(id) {
  state.last = { id };
  const params = new URLSearchParams({ id, ...options() });
  return run(`from item ${id}`, () => call(`/api/search?${params}`),
             () => `/api/image/${encodeURIComponent(id)}`);
}

function searchFile(file) {
  state.last = { file };
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(file);
  const form = new FormData();
  form.append("image", file, file.name);
  for (const [key, value] of Object.entries(options())) form.append(key, value);
  if (location.hash) history.pushState(null, "", location.pathname);
  return run(`with ${file.name}`, () => call("/api/search", { method: "POST", body: form }),
             () => state.objectUrl);
}

function rerun() {
  if (!state.last) return;
  if (state.last.file) searchFile(state.last.file); else searchId(state.last.id);
}

function fromHash() {
  const match = /^#id=(-?\d+)$/.exec(location.hash);
  if (match) searchId(match[1]);
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) searchFile(event.target.files[0]);
    event.target.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const files = event.dataTransfer.files;
    if (files.length) searchFile(files[0]);
  });
  for (const id of ["fine", "radius", "k"]) $(id).addEventListener("change", rerun);
  window.addEventListener("hashchange", fromHash);
}

async function start() {
  wire();
  try {
    state.info = await call("/api/info");
    showFacts(state.info);
    fromHash();
  } catch (err) {
    setStatus(`cannot read the index's facts: ${err.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", start);
