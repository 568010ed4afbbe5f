// The review page: one image at a time, keyboard first. Talks to the JSON API with the token of
// the URL; each tab is its own reviewer (two tabs never get the same image).
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const reviewer = sessionStorage.getItem("podium-reviewer") ||
  (() => { const id = "tab-" + crypto.getRandomValues(new Uint32Array(2)).join(""); sessionStorage.setItem("podium-reviewer", id); return id; })();
const $ = (id) => document.getElementById(id);
let view = null;
let busy = false;

async function call(path, body) {
  const init = { headers: { "X-Podium-Token": token, "Content-Type": "application/json" } };
  if (body !== undefined) { init.method = "POST"; init.body = JSON.stringify({ reviewer, ...body }); }
  const url = body === undefined ? `${path}?reviewer=${encodeURIComponent(reviewer)}` : path;
  const response = await fetch(url, init);
  const data = await response.json();
  if (!response.ok) { throw new Error(data.error || response.statusText); }
  return data;
}

function imageUrl(id) { return "/image/" + encodeURIComponent(id); }

function say(text, error = false) { const s = $("status"); s.textContent = text; s.className = error ? "error" : ""; }

function renderClasses(classes, current) {
  const box = $("classes");
  if (box.childElementCount !== classes.length) {
    box.replaceChildren(...classes.map((name, k) => {
      const b = document.createElement("button");
      b.className = "class-btn"; b.dataset.label = k;
      b.textContent = name + (k < 10 ? ` (${k})` : "");
      b.addEventListener("click", () => act("relabel", k));
      return b;
    }));
  }
  for (const b of box.children) { b.classList.toggle("current", Number(b.dataset.label) === current); }
}

function render(data) {
  view = data;
  const p = data.progress;
  $("progress").textContent = `${p.done} of ${p.total} decided`;
  $("per-class").replaceChildren(...p.per_class.map((c) => {
    const tr = document.createElement("tr");
    tr.innerHTML = "<td></td><td></td>";
    tr.children[0].textContent = c.class_name; tr.children[1].textContent = `${c.done} / ${c.total}`;
    return tr;
  }));
  const item = data.item;
  $("review").hidden = !item; $("done").hidden = !!item;
  if (!item) { return; }
  const img = $("image");
  img.src = imageUrl(item.image_id); img.dataset.imageId = item.image_id;
  $("label").textContent = item.class_name; $("score").textContent = item.score;
  $("top").replaceChildren(...item.top.map((t) => {
    const li = document.createElement("li");
    li.textContent = `${t.class_name}: ${(100 * t.prob).toFixed(1)} %`;
    const bar = document.createElement("span"); bar.className = "bar"; bar.style.width = `${Math.round(120 * t.prob)}px`;
    li.appendChild(bar);
    return li;
  }));
  $("neighbours").replaceChildren(...item.neighbours.map((n) => {
    const im = document.createElement("img"); im.src = imageUrl(n.image_id); im.alt = n.class_name; im.title = n.image_id;
    return im;
  }));
  renderClasses(data.classes, item.label);
}

async function run(promise, done) {
  if (busy) { return; }
  busy = true;
  try { render(await promise); if (done) { say(done); } }
  catch (err) { say(err.message, true); try { render(await call("/api/state")); } catch (_) { /* shown above */ } }
  finally { busy = false; }
}

function act(action, label = null) {
  if (!view || !view.item) { return; }
  const id = view.item.image_id;
  const named = action === "relabel" ? `relabel → ${view.classes[label]}` : action;
  run(call("/api/action", { image_id: id, action, label }), `${id}: ${named}`);
}

function undo() { run(call("/api/undo", {}), "undone"); }

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) { return; }
  if (e.key === "z") { undo(); }
  else if (e.key === "k") { act("keep"); }
  else if (e.key === "t" || e.key === "x") { act("trash"); }
  else if (e.key === "s") { act("skip"); }
  else if (/^[0-9]$/.test(e.key) && view && Number(e.key) < view.classes.length) { act("relabel", Number(e.key)); }
});
$("keep").addEventListener("click", () => act("keep"));
$("trash").addEventListener("click", () => act("trash"));
$("skip").addEventListener("click", () => act("skip"));
$("undo").addEventListener("click", undo);
$("undo-done").addEventListener("click", undo);
run(call("/api/state"));
