// pi-search: helpers both pages share (prices in the catalog's currency, plain similarity words, photos
// shrunk before upload, the staff lock).
"use strict";

const piSearch = (() => {
  const data = document.documentElement.dataset;
  let money = null;
  try {
    if (data.currency) {
      money = new Intl.NumberFormat(data.locale || undefined, { style: "currency", currency: data.currency });
    }
  } catch (e) {
    money = null;   // an unknown currency or locale: prices are shown as written
  }

  // A price written as a plain number ("3.20", "12") in the configured currency; anything else as written.
  function price(text) {
    const t = (text || "").trim();
    if (money && /^\d+(\.\d+)?$/.test(t)) return money.format(Number(t));
    return t;
  }

  // The page locale's decimal and grouping marks ("," and "." in German, "." and "," in English).
  const marks = (() => {
    try {
      const parts = new Intl.NumberFormat(data.locale || undefined).formatToParts(12345.6);
      const find = (type, or) => (parts.find((p) => p.type === type) || { value: or }).value;
      return { decimal: find("decimal", "."), group: find("group", ",") };
    } catch (e) {
      return { decimal: ".", group: "," };
    }
  })();

  // A price as staff type it in their locale ("22,90", "22.90", "1.234,50 €", "€ 1,234.50") as the plain
  // number the catalog holds ("22.90", "1234.50"); null when it is not a number ("on request").
  function parsePrice(text) {
    let t = (text || "").replace(/[\s\u00a0\u202f']/g, "");
    t = t.replace(/^[^\d.,-]+|[^\d.,]+$/g, "");   // a currency sign or code before or after the number
    if (!/^\d[\d.,]*$/.test(t)) return null;
    const last = Math.max(t.lastIndexOf("."), t.lastIndexOf(","));
    let whole = t;
    let frac = "";
    if (last >= 0) {
      const sep = t[last];
      const after = t.slice(last + 1);
      const single = t.indexOf(sep) === last;
      const other = sep === "." ? "," : ".";
      // The last mark is the decimal one unless it only groups thousands: it appears more than once, or
      // once with three digits after it where the locale groups with it ("1.234" in German is 1234).
      const groups = !single || (after.length === 3 && !t.includes(other) && sep === marks.group);
      if (!groups) {
        whole = t.slice(0, last);
        frac = after;
      }
    }
    const sep = whole.match(/[.,]/);
    if (sep) {   // grouping marks in the whole part: one kind only, groups of three
      if (!new RegExp("^\\d{1,3}(\\" + sep[0] + "\\d{3})+$").test(whole)) return null;
      whole = whole.split(sep[0]).join("");
    }
    if (!/^\d+$/.test(whole) || !/^\d*$/.test(frac)) return null;
    whole = whole.replace(/^0+(?=\d)/, "");
    return frac ? whole + "." + frac : whole;
  }

  // A catalog price ("1234.50") as staff type it in their locale ("1234,50"), for editing.
  function priceInput(text) {
    const t = (text || "").trim();
    return /^\d+(\.\d+)?$/.test(t) ? t.replace(".", marks.decimal) : t;
  }

  // Phone photos are 3-20 MB (12 to 50 MP): send them at most ``side`` pixels on the long side (the model
  // sees 224), turned upright, as a JPEG; a photo this browser cannot decode (HEIC here, say) goes as it is
  // and the appliance says what is wrong with it.
  async function shrink(file, side = 1280) {
    try {
      const bmp = await createImageBitmap(file);
      const scale = Math.min(1, side / Math.max(bmp.width, bmp.height));
      if (scale === 1 && file.size < 1024 * 1024) {
        bmp.close();
        return file;
      }
      const canvas = document.createElement("canvas");
      canvas.width = Math.round(bmp.width * scale);
      canvas.height = Math.round(bmp.height * scale);
      canvas.getContext("2d").drawImage(bmp, 0, 0, canvas.width, canvas.height);
      bmp.close();
      const blob = await new Promise((ok) => canvas.toBlob(ok, "image/jpeg", 0.9));
      return blob || file;
    } catch (e) {
      return file;
    }
  }

  // "Lock" on any page: forget this screen's PIN, then show the page locked (``then``: runs first).
  async function lock(then) {
    if (then) await then();
    try {
      await fetch("/api/lock", { method: "POST" });
    } finally {
      location.assign("/");
    }
  }

  // The served bundle's score scale (the status's "likeness"): the bar's empty end, "Possible match", "Good
  // match", "Strong match", the bar's full end. On the model's own cosines the right item of a camera shot
  // scores 0.4 to 0.8 and other items 0.2 to 0.45; a bundle with a learned projection scores lower and
  // carries its own scale, calibrated on its catalog's views.
  let scale = [0.15, 0.4, 0.5, 0.65, 0.85];

  function setScale(s) {
    if (Array.isArray(s) && s.length === 5) scale = s;
  }

  // Cosine similarity in words a person can act on; the number itself stays in the details.
  function likeness(score) {
    if (score >= scale[3]) return "Strong match";
    if (score >= scale[2]) return "Good match";
    if (score >= scale[1]) return "Possible match";
    return "Unlikely";
  }

  // How full the similarity bar is (0..1): spread over the range scores really take.
  function fullness(score) {
    return Math.max(0.03, Math.min(1, (score - scale[0]) / Math.max(1e-6, scale[4] - scale[0])));
  }

  return { price, parsePrice, priceInput, likeness, fullness, setScale, shrink, lock };
})();
