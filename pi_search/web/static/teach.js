// pi-search "add item" mode: capture shots from the live camera (or add photos), name the item, save it;
// list the recent changes with edit and remove.
"use strict";

const $ = (id) => document.getElementById(id);
let shots = [];          // {blob, kind, url}
let editing = null;      // id of the item being edited, or null when adding

function say(text, kind) {
  const m = $("message");
  m.textContent = text;
  m.className = "message " + (kind || "");
  m.setAttribute("role", kind === "error" ? "alert" : "status");
}

// The JSON body of an answer; throws the appliance's own error text when the request failed.
async function answer(r) {
  let body;
  try {
    body = await r.json();
  } catch (e) {
    throw new Error("the appliance answered " + r.status + " " + r.statusText);
  }
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function renderShots() {
  const list = $("shots");
  list.replaceChildren(...shots.map((s, i) => {
    const li = document.createElement("li");
    if (s.bad) li.className = "bad";
    const img = document.createElement("img");
    img.src = s.url;
    img.alt = "Shot " + (i + 1);
    const del = document.createElement("button");
    del.type = "button";
    del.textContent = "×";
    del.title = "Drop this shot";
    del.addEventListener("click", () => {
      URL.revokeObjectURL(s.url);
      shots.splice(i, 1);
      renderShots();
    });
    li.append(img, del);
    return li;
  }));
  $("save").textContent = (editing ? "Save changes" : "Save item")
    + (shots.length ? " (" + shots.length + " shot" + (shots.length > 1 ? "s" : "") + ")" : "");
}

// Phone photos are several MB each: send them at most 1280 px on the long side (the model sees 224 px), so a
// few shots stay within the daemon's upload limit.
async function shrink(file, side = 1280) {
  try {
    const bmp = await createImageBitmap(file);
    const scale = Math.min(1, side / Math.max(bmp.width, bmp.height));
    if (scale === 1 && file.size < 1024 * 1024) return file;
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(bmp.width * scale);
    canvas.height = Math.round(bmp.height * scale);
    canvas.getContext("2d").drawImage(bmp, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((ok) => canvas.toBlob(ok, "image/jpeg", 0.9));
    return blob || file;
  } catch (e) {
    return file;   // not decodable here: let the daemon say what is wrong with it
  }
}

function addShot(blob, kind) {
  shots.push({ blob, kind, url: URL.createObjectURL(blob) });
  renderShots();
}

function showScene(set) {
  $("scene").textContent = set
    ? "Empty scene: captured; it is taken out of every camera shot. Capture it again if the counter changes."
    : "Empty scene: not captured. Capture it once with nothing held up: it is taken out of the shots.";
}

async function captureScene() {
  try {
    const body = await answer(await fetch("/api/background", { method: "POST" }));
    showScene(body.background);
    say("Empty scene captured. Now hold the item up and capture it.", "ok");
  } catch (e) {
    say("Empty scene not captured: " + e.message, "error");
  }
}

async function capture() {
  try {
    const r = await fetch("/frame.jpg?t=" + Date.now(), { cache: "no-store" });
    if (!r.ok) throw new Error((await r.json()).error || r.statusText);
    addShot(await r.blob(), "camera");
    say("Shot " + shots.length + " captured; turn the item and capture another, or save.", "ok");
  } catch (e) {
    say("Capture failed: " + e.message, "error");
  }
}

function clearForm() {
  editing = null;
  shots.forEach((s) => URL.revokeObjectURL(s.url));
  shots = [];
  $("item-form").reset();
  $("item-id").readOnly = false;
  $("title").required = true;
  $("mode").textContent = "Add an item";
  $("cancel").hidden = true;
  renderShots();
}

function startEdit(item) {
  clearForm();
  editing = item.id;
  $("mode").textContent = "Edit " + item.title;
  $("title").value = item.title;
  $("price").value = item.price || "";
  $("item-id").value = item.id;
  $("item-id").readOnly = true;
  $("cancel").hidden = false;
  say("Change the title or price, or capture more shots of the item; then save.", "");
  renderShots();
}

async function save(e) {
  e.preventDefault();
  if (!editing && !shots.length) {
    say("Capture at least one shot of the item first.", "error");
    return;
  }
  const form = new FormData();
  form.append("title", $("title").value);
  form.append("price", $("price").value);
  if (!editing) form.append("id", $("item-id").value);
  shots.forEach((s, i) => {
    form.append("image", s.blob, "shot-" + (i + 1) + ".jpg");
    form.append("kind", s.kind);
    s.bad = false;
  });
  renderShots();
  $("save").disabled = true;
  say(editing ? "Saving…" : "Learning the item…", "");
  try {
    const url = editing ? "/api/items/" + encodeURIComponent(editing) : "/api/items";
    const r = await fetch(url, { method: editing ? "PATCH" : "POST", body: form });
    const body = await answer(r);
    const it = body.item;
    say((editing ? "Saved changes to " : "Saved ") + "“" + it.title + "” (" + it.id + "): it is searchable now.",
      "ok");
    clearForm();
    await loadRecent();
  } catch (err) {
    // Nothing was saved: say why, and mark the shot the appliance could not read (its name is in the message).
    shots.forEach((s, i) => { s.bad = err.message.includes("shot-" + (i + 1) + ".jpg"); });
    renderShots();
    say("Not saved: " + err.message + ". Drop the marked shot or fix the form, then save again.", "error");
  } finally {
    $("save").disabled = false;
  }
}

async function remove(item, button) {
  if (button.dataset.confirm !== "1") {
    button.dataset.confirm = "1";
    button.textContent = "Confirm remove";
    return;
  }
  try {
    await answer(await fetch("/api/items/" + encodeURIComponent(item.id), { method: "DELETE" }));
    say("Removed “" + item.title + "”.", "ok");
    await loadRecent();
  } catch (err) {
    say("Not removed: " + err.message, "error");
  }
}

function row(item) {
  const li = document.createElement("li");
  li.className = "card" + (item.deleted ? " removed" : "");
  li.dataset.id = item.id;
  const img = document.createElement("img");
  img.alt = "";
  if (item.thumb) img.src = item.thumb;
  const text = document.createElement("div");
  text.className = "text";
  const title = document.createElement("div");
  title.className = "title";
  title.textContent = item.title;
  const price = document.createElement("div");
  price.className = "price";
  price.textContent = piSearch.price(item.price);
  const info = document.createElement("div");
  info.className = "score";
  const what = item.folded ? "taught, in the catalog"
    : (item.deleted ? "removed" : (item.in_bundle ? "edited" : "taught"));
  info.textContent = what + " · " + item.id + (item.shots ? " · " + item.shots + " shot(s)" : "");
  text.append(title, price, info);
  li.append(img, text);
  if (!item.deleted) {
    const actions = document.createElement("div");
    actions.className = "actions";
    const edit = document.createElement("button");
    edit.type = "button";
    edit.className = "edit";
    edit.textContent = "Edit";
    edit.addEventListener("click", () => startEdit(item));
    const del = document.createElement("button");
    del.type = "button";
    del.className = "danger remove";
    del.textContent = "Remove";
    del.addEventListener("click", () => remove(item, del));
    actions.append(edit, del);
    li.append(actions);
  }
  return li;
}

async function loadRecent() {
  try {
    const body = await answer(await fetch("/api/items", { cache: "no-store" }));
    const folded = (body.folded || []).map((f) => row({ ...f, folded: true }));
    $("recent").replaceChildren(...body.items.map(row), ...folded);
    showScene(body.background);
    $("hint").textContent = body.catalog_items + " items in the catalog"
      + (body.items.length ? ", " + body.items.length + " changed since the last compaction" : "")
      + (body.compacting ? " · compacting…" : "") + ".";
  } catch (err) {
    say("Cannot list the items: " + err.message, "error");
  }
}

async function unlock(e) {
  e.preventDefault();
  const form = new FormData();
  form.append("pin", $("pin").value);
  try {
    await answer(await fetch("/api/unlock", { method: "POST", body: form }));
    location.reload();
  } catch (err) {
    $("pin").value = "";
    say("Not unlocked: " + err.message + ".", "error");
  }
}

async function relock() {
  await fetch("/api/lock", { method: "POST" });
  location.assign("/");
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.documentElement.dataset.teach === "locked") {
    if ($("unlock")) $("unlock").addEventListener("submit", unlock);
    return;
  }
  if ($("relock")) $("relock").addEventListener("click", relock);
  $("capture").addEventListener("click", capture);
  $("background").addEventListener("click", captureScene);
  $("files").addEventListener("change", async () => {
    const files = [...$("files").files];
    $("files").value = "";
    for (const f of files) addShot(await shrink(f), "photo");
  });
  $("item-form").addEventListener("submit", save);
  $("cancel").addEventListener("click", () => { clearForm(); say("", ""); });
  renderShots();
  loadRecent();
});
