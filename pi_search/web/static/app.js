// pi-search page: follows the latest result (long polling), freezes it on demand, searches an uploaded photo.
"use strict";

const $ = (id) => document.getElementById(id);
let frozen = false;
let uploaded = false;
let lastFrame = null;

function pct(score) {
  return Math.round(Math.max(0, Math.min(1, score)) * 100) + "% similar";
}

function card(m) {
  const li = document.createElement("li");
  li.className = "card";
  const img = document.createElement("img");
  img.src = "/thumbs/" + encodeURIComponent(m.id);
  img.alt = "";
  img.loading = "lazy";
  const text = document.createElement("div");
  text.className = "text";
  const title = document.createElement("div");
  title.className = "title";
  title.textContent = m.title;
  const price = document.createElement("div");
  price.className = "price";
  price.textContent = m.price || "";
  const score = document.createElement("div");
  score.className = "score";
  score.textContent = pct(m.score) + " (cosine " + m.score.toFixed(3) + ")";
  text.append(title, price, score);
  li.append(img, text);
  return li;
}

function showMatches(matches, heading) {
  $("heading").textContent = heading;
  const list = $("matches");
  // Keep the thumbnails that are already there when the order did not change (no flicker).
  const ids = matches.map((m) => m.id).join("\n");
  if (list.dataset.ids === ids) {
    list.querySelectorAll(".score").forEach((el, i) => {
      el.textContent = pct(matches[i].score) + " (cosine " + matches[i].score.toFixed(3) + ")";
    });
    return;
  }
  list.dataset.ids = ids;
  list.replaceChildren(...matches.map(card));
}

function showStatus(s) {
  const cam = s.camera.up ? "camera " + s.camera.fps.toFixed(1) + " fps" : "camera offline: " + s.camera.reason;
  const ms = s.extract_ms == null ? "" : " · extract " + s.extract_ms.toFixed(1) + " ms · search "
    + s.search_ms.toFixed(1) + " ms";
  const el = $("status");
  el.title = s.camera.source;
  el.replaceChildren();
  const c = document.createElement("span");
  c.textContent = cam;
  if (!s.camera.up) c.className = "down";
  el.append(c, document.createTextNode(ms + " · " + s.catalog_items + " items · " + s.model
    + " · " + s.inferences + " inferred, " + s.skipped + " unchanged skipped"));
}

async function follow() {
  for (;;) {
    try {
      const q = lastFrame == null ? "" : "?after=" + lastFrame + "&wait=2";
      const r = await fetch("/api/results" + q, { cache: "no-store" });
      const body = await r.json();
      showStatus(body.status);
      if (body.ready && body.frame_id !== lastFrame) {
        lastFrame = body.frame_id;
        if (!frozen && !uploaded) showMatches(body.matches, "Best matches");
      } else if (!body.ready) {
        await new Promise((ok) => setTimeout(ok, 300));
      }
    } catch (e) {
      $("status").textContent = "No connection to the appliance; retrying…";
      await new Promise((ok) => setTimeout(ok, 1000));
    }
  }
}

function setFrozen(on) {
  frozen = on;
  const b = $("freeze");
  b.setAttribute("aria-pressed", String(on));
  b.textContent = on ? "Live" : "Freeze";
  $("badge").hidden = !on;
  $("badge").textContent = uploaded ? "Uploaded photo" : "Frozen";
  // A frozen view shows the still frame the held matches came from; live shows the stream again.
  $("preview").src = on ? (uploaded ? $("preview").src : "/frame.jpg?f=" + lastFrame) : "/stream.mjpg";
  if (!on) uploaded = false;
}

async function upload() {
  const file = $("photo").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  $("heading").textContent = "Searching the photo…";
  try {
    const r = await fetch("/api/search", { method: "POST", body: form });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    uploaded = true;
    $("preview").src = URL.createObjectURL(file);
    setFrozen(true);
    showMatches(body.matches, "Matches for " + file.name);
  } catch (e) {
    $("heading").textContent = "Upload failed: " + e.message;
  }
  $("photo").value = "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("freeze").addEventListener("click", () => setFrozen(!frozen));
  $("photo").addEventListener("change", upload);
  $("upload").addEventListener("submit", (e) => { e.preventDefault(); upload(); });
  follow();
});
