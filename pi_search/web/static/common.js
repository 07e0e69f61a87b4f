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

  // Cosine similarity in words a person can act on; the number stays in the details.
  function likeness(score) {
    if (score >= 0.85) return "Very close match";
    if (score >= 0.7) return "Close match";
    if (score >= 0.55) return "Possible match";
    return "Weak match";
  }

  return { price, likeness };
})();
