// pi-search: helpers both pages share (prices in the catalog's currency, plain similarity words).
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

  // Cosine similarity in words a person can act on (the shipped model gives the right item of a camera shot
  // 0.4 to 0.8 and other items 0.2 to 0.45); the number itself stays in the details.
  function likeness(score) {
    if (score >= 0.65) return "Strong match";
    if (score >= 0.5) return "Good match";
    if (score >= 0.4) return "Possible match";
    return "Unlikely";
  }

  // How full the similarity bar is (0..1): spread over the range scores really take.
  function fullness(score) {
    return Math.max(0.03, Math.min(1, (score - 0.15) / 0.7));
  }

  return { price, likeness, fullness };
})();
