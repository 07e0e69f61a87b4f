// pi-search "add item" mode: capture shots from the live camera (or add photos), name the item, save it;
// list the recent changes with edit and remove.
"use strict";

const $ = (id) => document.getElementById(id);
let shots = [];          // {blob, kind, url}
let editing = null;      // id of the item being edited, or null when adding
const leaving = new Map(); // id -> {timer, item}: removals that wait UNDO_S for Undo before they are sent
const UNDO_S = 10;

// Ids the appliance made up (item-1a2b3c4d) mean nothing to staff: they see the title only.
const automatic = (id) => /^item-[0-9a-f]{8}$/.test(id);

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

// Reads the code held up to the camera (POST /api/scan) into the barcode field; a code already in the
// catalog is named, so the same pack is not taught twice by mistake.
async function scan() {
  $("scan").disabled = true;
  try {
    const body = await answer(await fetch("/api/scan", { method: "POST" }));
    const have = $("barcode").value.split(";").map((c) => c.trim()).filter(Boolean);
    for (const c of body.codes) if (!have.includes(c.code)) have.push(c.code);
    $("barcode").value = have.join(";");
    const taken = body.codes.filter((c) => c.id && c.id !== editing);
    say(taken.length
      ? "Code " + taken[0].code + " is already item " + taken[0].id + "'s."
      : "Barcode " + body.codes.map((c) => c.code).join(", ") + " read.", taken.length ? "error" : "ok");
  } catch (e) {
    say("Scan failed: " + e.message, "error");
  } finally {
    $("scan").disabled = false;
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
  $("price").value = piSearch.priceInput(item.price);
  $("item-id").value = automatic(item.id) ? "" : item.id;
  $("barcode").value = (item.extra && item.extra.barcode) || "";
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
  // "22,90" or "1.234,50 €" as typed here: the plain number catalog prices are ("22.90"); words stay words.
  const typed = $("price").value.trim();
  form.append("price", piSearch.parsePrice(typed) ?? typed);
  if (!editing) form.append("id", $("item-id").value);
  form.append("barcode", $("barcode").value.trim());
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
    say((editing ? "Saved changes to " : "Taught ") + "“" + it.title + "”" + (automatic(it.id) ? "" : " (" + it.id
      + ")") + ": it is searchable now.", "ok");
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

// Remove waits UNDO_S seconds for Undo before it is sent (and is sent at once when the page is left).
function remove(item) {
  if (leaving.has(item.id)) return;
  const timer = setTimeout(() => sendRemove(item.id), UNDO_S * 1000);
  leaving.set(item.id, { timer, item });
  say("Removing “" + item.title + "” in " + UNDO_S + " seconds: tap Undo to keep it.", "");
  loadRecent();
}

function undo(id) {
  const l = leaving.get(id);
  if (!l) return;
  clearTimeout(l.timer);
  leaving.delete(id);
  say("Kept “" + l.item.title + "”: nothing was removed.", "ok");
  loadRecent();
}

async function sendRemove(id, keepalive = false) {
  const l = leaving.get(id);
  if (!l) return;
  clearTimeout(l.timer);
  leaving.delete(id);
  try {
    await answer(await fetch("/api/items/" + encodeURIComponent(id), { method: "DELETE", keepalive }));
    if (!keepalive) say("Removed “" + l.item.title + "”.", "ok");
  } catch (err) {
    say("Not removed: " + err.message, "error");
  }
  if (!keepalive) await loadRecent();
}

// Before the page is left or locked: the removals still waiting for Undo are sent now.
function sendWaitingRemovals() {
  return Promise.all([...leaving.keys()].map((id) => sendRemove(id, true)));
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
  const waiting = leaving.has(item.id);
  if (waiting) li.classList.add("leaving");
  info.textContent = (waiting ? "removing in a few seconds" : what) + (automatic(item.id) ? "" : " · " + item.id)
    + (item.shots ? " · " + item.shots + " shot" + (item.shots > 1 ? "s" : "") : "");
  text.append(title, price, info);
  li.append(img, text);
  if (waiting) {
    const actions = document.createElement("div");
    actions.className = "actions";
    const back = document.createElement("button");
    back.type = "button";
    back.className = "undo";
    back.textContent = "Undo";
    back.addEventListener("click", () => undo(item.id));
    actions.append(back);
    li.append(actions);
  } else if (!item.deleted) {
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
    del.addEventListener("click", () => remove(item));
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
    if (body.no_catalog) {   // nothing can be taught until a bundle is served
      const text = body.no_catalog.charAt(0).toUpperCase() + body.no_catalog.slice(1) + ".";
      $("count").textContent = text;
      say(text, "error");
      return;
    }
    const n = body.items.length;
    $("count").textContent = body.catalog_items + (body.catalog_items === 1 ? " item" : " items")
      + " in the catalog" + (n ? "; " + n + (n === 1 ? " recent change" : " recent changes") + ", listed "
      + "below" : "") + (body.compacting ? " · the catalog is being updated…" : "") + ".";
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


document.addEventListener("DOMContentLoaded", () => {
  if (document.documentElement.dataset.teach === "locked") {
    if ($("unlock")) $("unlock").addEventListener("submit", unlock);
    return;
  }
  if ($("relock")) {
    $("relock").addEventListener("click", () => piSearch.lock(sendWaitingRemovals));   // removals first
  }
  window.addEventListener("pagehide", sendWaitingRemovals);
  $("capture").addEventListener("click", capture);
  $("scan").addEventListener("click", scan);
  $("background").addEventListener("click", captureScene);
  $("files").addEventListener("change", async () => {
    const files = [...$("files").files];
    $("files").value = "";
    for (const f of files) addShot(await piSearch.shrink(f), "photo");
    if (files.length) {
      say((files.length === 1 ? "Photo added" : files.length + " photos added") + ": " + shots.length
        + (shots.length === 1 ? " shot" : " shots") + " ready. Add more, or give the item a title and save.",
        "ok");
    }
  });
  $("item-form").addEventListener("submit", save);
  $("cancel").addEventListener("click", () => { clearForm(); say("", ""); });
  renderShots();
  loadRecent();
});
