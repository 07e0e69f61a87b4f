// pi-search page: follows the latest result (long polling) and shows each result's own frame beside its
// matches; freezes it on demand; searches an uploaded photo.
"use strict";

const $ = (id) => document.getElementById(id);
// live: follows the camera; frozen: holds what is shown; searching: an upload is on its way;
// upload: shows an uploaded photo's matches; failed: the upload failed, no matches are shown.
let mode = "live";
let lastFrame = null;     // frame id of the newest result received
let latest = null;        // the newest result received (shown again on "Live")
let shownUrl = null;      // blob URL of the frame on screen
let frameSize = null;     // [width, height] of the frame on screen
let guide = null;         // the result's optional guide: {hint, target, region}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

function scoreBlock(score, via) {
  const box = document.createElement("div");
  box.className = "score";
  if (via === "barcode") {   // named by a code read in the picture, not by its look
    const tag = document.createElement("span");
    tag.className = "via";
    tag.textContent = "Barcode";
    box.append(tag);
    return box;
  }
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.setAttribute("aria-hidden", "true");
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.width = Math.round(piSearch.fullness(score) * 100) + "%";
  bar.append(fill);
  const word = document.createElement("span");
  word.className = "word";
  word.textContent = piSearch.likeness(score);
  const num = document.createElement("span");
  num.className = "num";
  num.textContent = "similarity " + score.toFixed(3);
  box.append(bar, word, num);
  return box;
}

function card(m) {
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.id = m.id;
  const img = document.createElement("img");
  // the thumbnail of the photo that matched (an item may have several)
  img.src = "/thumbs/" + encodeURIComponent(m.id) + (m.photo ? "?photo=" + m.photo : "");
  img.alt = "";
  const text = document.createElement("div");
  text.className = "text";
  const title = document.createElement("div");
  title.className = "title";
  title.textContent = m.title;
  const price = document.createElement("div");
  price.className = "price";
  price.textContent = piSearch.price(m.price);
  text.append(title, price, scoreBlock(m.score, m.via));
  li.append(img, text);
  return li;
}

// The codes read in the picture that name no catalog item: "Code 5012345678900: not in the catalog".
function showCodes(codes) {
  const box = $("codes");
  const unknown = (codes || []).filter((c) => !c.matched);
  box.replaceChildren(...unknown.map((c) => {
    const li = document.createElement("li");
    li.textContent = "Code " + c.code + ": not in the catalog";
    return li;
  }));
  box.hidden = !unknown.length;
}

function showMatches(matches, heading, codes) {
  $("heading").textContent = heading;
  showCodes(codes);
  const list = $("matches");
  list.classList.remove("stale");
  // Keep the thumbnails that are already there when the order did not change (no flicker).
  const ids = matches.map((m) => m.id + "#" + (m.photo || 0) + (m.via || "")).join("\n");
  if (list.dataset.ids === ids && matches.length) {
    list.querySelectorAll(".score").forEach((el, i) => el.replaceWith(scoreBlock(matches[i].score,
      matches[i].via)));
    return;
  }
  list.dataset.ids = ids;
  list.replaceChildren(...matches.map(card));
}

function clearMatches() {
  showCodes([]);
  const list = $("matches");
  list.dataset.ids = "";
  list.replaceChildren();
}

function problem(text) {
  $("problem").textContent = text || "";
  $("problem").hidden = !text;
}

function showStatus(s) {
  piSearch.setScale(s.likeness);   // the served bundle's score scale, before its matches are drawn
  if (s.teach === "locked" && document.documentElement.dataset.teach === "unlocked") {
    location.reload();   // the PIN's 30 minutes ran out (or another tab locked): show the page locked
    return;
  }
  const items = s.catalog_items + (s.catalog_items === 1 ? " item" : " items");
  const el = $("status");
  el.classList.toggle("down", !s.camera.up);
  if (!s.camera.up) {
    el.textContent = "Camera not working · " + items;
    if (mode === "live") {
      problem("The camera sends no picture (" + s.camera.reason + "). Check that it is plugged in; the "
        + "appliance keeps trying. Photos can still be searched.");
    }
  } else if (s.catalog_problem) {
    el.classList.add("down");
    el.textContent = "Camera OK · no catalog";
    if (mode === "live") {
      problem("No catalog is loaded (" + s.catalog_problem + "). Install or build the catalog bundle; the "
        + "appliance picks it up by itself.");
    }
  } else {
    el.textContent = (s.catalog_items ? "Camera OK · " : "Camera OK · no items yet · ") + items;
    if (mode === "live") problem(s.catalog_items ? "" : "The catalog is empty: add items first.");
  }
  $("tech").textContent = s.camera.fps.toFixed(1) + " frames/s · model " + (s.extract_ms == null ? "–"
    : s.extract_ms.toFixed(1)) + " ms · search " + (s.search_ms == null ? "–" : s.search_ms.toFixed(1))
    + " ms · " + s.model + " · " + s.inferences + " frames searched, " + s.skipped + " unchanged · "
    + s.camera.source;
}

// Puts an image element on screen in place of the preview (same id), in the caller's task: the caller
// changes the matches in that same task, so both are painted together.
function swapPreview(img, url, alt) {
  img.id = "preview";
  img.alt = alt;
  $("preview").replaceWith(img);
  if (shownUrl) URL.revokeObjectURL(shownUrl);
  shownUrl = url;
  if (img.naturalWidth) {
    frameSize = [img.naturalWidth, img.naturalHeight];
    $("stage").style.aspectRatio = img.naturalWidth + " / " + img.naturalHeight;
  }
  drawGuide();
}

async function decoded(blob) {
  const url = URL.createObjectURL(blob);
  const img = new Image();
  img.src = url;
  try {
    await img.decode();
  } catch (e) {
    URL.revokeObjectURL(url);
    return null;
  }
  return { img, url };
}

// Loads the frame of one result, then shows the frame and its matches together; false if the frame is gone.
async function showResult(body) {
  const r = await fetch("/frame.jpg?id=" + body.frame_id, { cache: "no-store" });
  if (!r.ok) return false;
  const shot = await decoded(await r.blob());
  if (!shot) return false;
  if (mode !== "live" || body !== latest) {   // frozen, or a newer result came meanwhile
    URL.revokeObjectURL(shot.url);
    return false;
  }
  guide = body.guide || null;
  swapPreview(shot.img, shot.url, "Camera view");
  $("stage").dataset.frame = body.frame_id;
  $("results").dataset.frame = body.frame_id;
  showMatches(body.matches, body.matches.length ? "Best matches" : "No match", body.codes);
  return true;
}

function drawGuide() {
  const box = $("target");
  const hint = $("guide");
  const g = mode === "live" || mode === "frozen" ? guide : null;
  hint.textContent = g && g.hint ? g.hint : "";
  hint.hidden = !(g && g.hint);
  if (!g || !Array.isArray(g.target) || g.target.length !== 4 || !frameSize) {
    box.hidden = true;
    return;
  }
  // The frame fills the stage with object-fit: contain: place the box over the picture itself.
  const stage = $("stage").getBoundingClientRect();
  const scale = Math.min(stage.width / frameSize[0], stage.height / frameSize[1]);
  const w = frameSize[0] * scale;
  const h = frameSize[1] * scale;
  const x = (stage.width - w) / 2;
  const y = (stage.height - h) / 2;
  const [x0, y0, x1, y1] = g.target.map((v) => Math.max(0, Math.min(1, Number(v) || 0)));
  // In per cent of the stage, so the box stays on the picture when the stage is resized later.
  const pc = (v, total) => (100 * v / total) + "%";
  box.style.left = pc(x + x0 * w, stage.width);
  box.style.top = pc(y + y0 * h, stage.height);
  box.style.width = pc(Math.max(0, x1 - x0) * w, stage.width);
  box.style.height = pc(Math.max(0, y1 - y0) * h, stage.height);
  box.hidden = false;
}

async function follow() {
  for (;;) {
    try {
      const q = lastFrame == null ? "" : "?after=" + lastFrame + "&wait=2";
      const r = await fetch("/api/results" + q, { cache: "no-store" });
      const body = await r.json();
      if (!r.ok) throw new Error(body.error || r.statusText);
      showStatus(body.status);
      if (body.ready && body.frame_id !== lastFrame) {
        lastFrame = body.frame_id;
        latest = body;
        if (mode === "live") await showResult(body);
      } else if (!body.ready) {
        await sleep(300);
      }
    } catch (e) {
      $("status").textContent = "No connection";
      $("status").classList.add("down");
      if (mode === "live") {
        problem("No connection to the search appliance. It may be restarting; this page retries by "
          + "itself. If it lasts more than a minute, restart the appliance.");
      }
      await sleep(1000);
    }
  }
}

function setMode(next, badge) {
  mode = next;
  const held = next !== "live";
  const b = $("freeze");
  b.setAttribute("aria-pressed", String(held));
  b.textContent = held ? "Live" : "Freeze";
  $("badge").hidden = !badge;
  $("badge").textContent = badge || "";
  document.documentElement.dataset.mode = next;
  drawGuide();
}

function toggleFreeze() {
  if (mode === "live") {
    setMode("frozen", "Frozen");
    return;
  }
  setMode("live", "");
  problem("");
  if (latest) showResult(latest);
}

async function upload() {
  const file = $("photo").files[0];
  if (!file) return;
  $("photo").value = "";
  setMode("searching", "Searching…");
  problem("");
  $("heading").textContent = "Searching the photo…";
  $("matches").classList.add("stale");   // the matches below are not the photo's
  const photo = await piSearch.shrink(file);   // a phone's 10-20 MB photo goes as a JPEG of 1280 px
  const form = new FormData();
  form.append("image", photo, file.name);
  try {
    const r = await fetch("/api/search", { method: "POST", body: form });
    let body;
    try {
      body = await r.json();
    } catch (e) {
      body = { error: "the appliance answered " + r.status + " " + r.statusText };
    }
    if (!r.ok) throw new Error(body.error || r.statusText);
    const shot = await decoded(photo);
    if (shot) {
      swapPreview(shot.img, shot.url, "Uploaded photo " + file.name);
    } else {   // searched by the appliance, but a format this browser cannot show (HEIC, TIFF)
      swapPreview(new Image(), null, "");
    }
    setMode("upload", "Photo");
    showMatches(body.matches, "Matches for " + file.name, body.codes);
  } catch (e) {
    swapPreview(new Image(), null, "");   // no picture: neither the refused photo nor a live frame
    setMode("failed", "Photo not searched");
    clearMatches();
    $("heading").textContent = "Photo not searched";
    // The appliance's message names the file when it is about the file: the name is said once.
    let why = e.message.includes(file.name) ? e.message : file.name + ": " + e.message;
    if (!/[.!?]$/.test(why)) why += ".";
    problem("The photo could not be searched. " + why + " Choose another photo, or tap Live to go back to "
      + "the camera.");
  }
}

function toggleDetails() {
  const on = $("details").getAttribute("aria-pressed") !== "true";
  $("details").setAttribute("aria-pressed", String(on));
  document.documentElement.classList.toggle("details", on);
  try {
    localStorage.setItem("pi-search-details", on ? "1" : "");
  } catch (e) { /* private mode: not remembered */ }
}

document.addEventListener("DOMContentLoaded", () => {
  $("freeze").addEventListener("click", toggleFreeze);
  $("photo").addEventListener("change", upload);
  $("upload").addEventListener("submit", (e) => { e.preventDefault(); upload(); });
  $("details").addEventListener("click", toggleDetails);
  if ($("relock")) $("relock").addEventListener("click", () => piSearch.lock());
  try {
    if (localStorage.getItem("pi-search-details")) toggleDetails();
  } catch (e) { /* no storage */ }
  window.addEventListener("resize", drawGuide);
  follow();
});
