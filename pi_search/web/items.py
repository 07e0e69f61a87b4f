"""Teaching items on the kiosk: the "add item" page and the API that adds, edits and removes items."""

from __future__ import annotations

import logging
import threading

from flask import Blueprint, jsonify, render_template, request

from ..barcodes.codes import keys, tidy, with_barcode
from ..barcodes.decode import read_codes
from ..barcodes.pictures import grey_for_codes
from ..errors import BadInput, BundleError, ImageError, NothingFound, Unavailable
from ..images import decode, encode_jpeg
from ..learn.relearn import keep_scene
from ..live.changes import MAX_SHOTS
from ..live.teach import embed_background, embed_shots
from .auth import page as _page
from .context import appliance as _appliance
from .context import config as _config
from .errors import no_catalog as _no_catalog
from .errors import no_catalog_message
from .lock import refuse_if_locked, teaching_state
from .uploads import decode_upload

log = logging.getLogger(__name__)

bp = Blueprint("pi_search_items", __name__, template_folder="templates")

_embedding = threading.BoundedSemaphore(1)   # one teaching request embeds at a time (shares the model)


@bp.before_request
def _locked():
    """With ``[page] lock_teaching`` every route here but the page itself needs the PIN or the token too
    (Host, Origin and token checks ran before, in ``auth``). A change needs a served catalog: 503 saying so
    before any photo is read or embedded."""
    if request.endpoint == "pi_search_items.page":
        return
    refuse_if_locked()
    if request.method != "GET" and not _catalog().serving:
        raise _no_catalog(_catalog().problem)


def _catalog():
    """The live catalog teaching changes (bundle plus taught items)."""
    return _appliance().teaching.catalog


def _shots() -> list:
    """The uploaded shots as ``(rgb, kind)``: multipart fields ``image`` (repeated) and ``kind`` (same order,
    ``camera`` or ``photo``; default photo)."""
    files = request.files.getlist("image")
    kinds = request.form.getlist("kind")
    if len(files) > MAX_SHOTS:
        raise ImageError(f"{len(files)} shots: send at most {MAX_SHOTS}")
    out = []
    with _appliance().upload_slot():  # like a search upload: two photos decoded at a time at most
        for n, f in enumerate(files):
            kind = kinds[n] if n < len(kinds) else "photo"
            out.append((decode_upload(f.read(), name=f.filename or f"shot {n + 1}"), kind))
    return out


def _item_json(cat, item_id: str) -> dict | None:
    info = cat.item(item_id)
    if info is not None:
        info["thumb"] = f"/thumbs/{item_id}"
    return info


def _barcode() -> str | None:
    """The form's ``barcode`` (codes separated by ``;``) tidied, "" to clear it, None when not sent;
    CatalogError (400) for an EAN/UPC number with a wrong check digit."""
    value = request.form.get("barcode")
    return None if value is None else tidy(value)


def _embed(cat, shots):
    with _embedding:
        return embed_shots(_appliance().teaching.extractor, shots, background=cat.background)


@bp.get("/teach")
@_page
def page():
    return render_template("teach.html", page=_config().page, teach=teaching_state())


@bp.get("/api/items")
def list_items():
    """The items taught, edited or removed since the bundle was built or compacted, newest first; and
    (``folded``) the 50 items taught most recently that a compaction already folded into the bundle;
    ``no_catalog`` says what to do while no bundle is served (else null)."""
    cat = _catalog()
    rows = []
    for it in cat.changes():
        d = it.as_dict()
        d["thumb"] = None if it.deleted else f"/thumbs/{it.id}"
        rows.append(d)
    folded = [{**f, "thumb": f"/thumbs/{f['id']}", "in_bundle": True, "deleted": False}
              for f in cat.folded(50)]
    resp = jsonify({"items": rows, "folded": folded, "catalog_items": len(cat), "compacting": cat.compacting,
                    "last_compaction": cat.last_compaction, "background": cat.background is not None,
                    "no_catalog": None if cat.serving else no_catalog_message(cat.problem)})
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/api/items")
def add_item():
    """Teach an item: multipart ``title``, ``price``, ``id`` (optional) and one or more ``image`` shots."""
    cat = _catalog()
    shots = _shots()   # bad input (400), an id taken (409): raised by type, answered by web/errors.py
    if not shots:
        raise BadInput("no shots: capture or upload at least one photo of the item")
    barcode = _barcode()
    try:
        vecs, thumb = _embed(cat, shots)
        item_id = cat.add(request.form.get("title", ""), request.form.get("price") or None, vecs,
                          item_id=request.form.get("id") or None, thumb=thumb,
                          extra={"barcode": barcode} if barcode else None)
    except BundleError as exc:
        if cat.serving:
            raise
        raise _no_catalog(cat.problem) from exc  # the bundle went away while the shots were embedded
    log.info("item %s taught from the page (%d shot(s))", item_id, len(shots))
    resp = jsonify({"item": _item_json(cat, item_id)})
    resp.status_code = 201
    return resp


@bp.route("/api/items/<path:item_id>", methods=["PATCH", "POST"])
def edit_item(item_id: str):
    """Edit an item: any of ``title``, ``price`` (empty clears it), ``barcode`` (empty clears it) and
    further ``image`` shots."""
    cat = _catalog()
    barcode, extra = _barcode(), None   # bad input (400), no such item (404): raised by type
    if barcode is not None:
        extra = with_barcode((cat.item(item_id) or {}).get("extra"), barcode)
    shots = _shots()
    vecs = _embed(cat, shots)[0] if shots else None
    price = request.form.get("price")
    cat.edit(item_id, title=request.form.get("title") or None, price=price or None, vectors=vecs,
             clear_price=price == "", extra=extra)
    return jsonify({"item": _item_json(cat, item_id)})


@bp.post("/api/scan")
def scan():
    """Read the barcodes in the camera's current frame (or an uploaded ``image``) for the teach form:
    ``{"codes": [{"code", "format", "id"}], "barcode": "CODE;CODE"}`` (``id``: the item a code already
    names, or null); 422 when no code is found, saying how to hold it."""
    cat = _catalog()
    upload = request.files.get("image")
    port = _appliance()
    with port.upload_slot():   # a read takes a fraction of a second of CPU, like an upload
        if upload is not None:
            grey = grey_for_codes(upload.read(), upload.filename or "image")
        else:
            latest = port.latest()
            if latest is None:
                raise Unavailable("no camera frame yet; try again in a moment")
            grey = grey_for_codes(latest.jpeg, "the current frame")
        codes = read_codes(grey) if grey is not None else []
    if not codes:
        raise NothingFound("no barcode found: hold the code flat and close to the camera, in good light, "
                           "and press Scan again (or type the number)")
    named = cat.code_items([k for c in codes for k in keys(c.text)])
    found = [{"code": c.text, "format": c.format,
              "id": next((named[k].id for k in keys(c.text) if k in named), None)} for c in codes]
    return jsonify({"codes": found, "barcode": ";".join(c.text for c in codes)})


@bp.delete("/api/items/<path:item_id>")
def remove_item(item_id: str):
    cat = _catalog()
    cat.remove(item_id)   # no such item (404), already removed (409): raised by type
    return jsonify({"removed": item_id, "catalog_items": len(cat)})


@bp.post("/api/background")
def set_background():
    """Remember the empty scene (multipart ``image``, else the camera's current frame): it is taken out of
    every camera shot taught afterwards, so items taught at the counter do not match each other's counter."""
    cat = _catalog()
    upload = request.files.get("image")
    if upload is not None:
        with _appliance().upload_slot():
            rgb = decode_upload(upload.read(), name=upload.filename or "background")
    else:
        latest = _appliance().latest()
        if latest is None:
            raise Unavailable("no camera frame yet; try again in a moment")
        rgb = decode(latest.jpeg, name="the current frame")
    with _embedding:
        cat.set_background(embed_background(_appliance().teaching.extractor, rgb))
    try:   # kept for pi-search index relearn: the views learn on this counter too
        keep_scene(cat.directory, encode_jpeg(rgb, 90))
    except OSError as exc:
        log.warning("the empty scene was not kept for relearning (%s)", exc)
    log.info("empty scene captured for teaching")
    return jsonify({"background": True})


@bp.delete("/api/background")
def clear_background():
    cat = _catalog()
    cat.set_background(None)
    return jsonify({"background": False})


@bp.post("/api/relearn")
def relearn():
    """Start learning the bundle's projection again on the captured empty scenes (``pi-search index
    relearn`` in a process of its own); GET /api/relearn says how far it is. The old bundle serves until the
    new generation is swapped in and reloaded."""
    port = _appliance()
    started = port.relearn()
    resp = jsonify({"started": started, **port.relearn_status()})
    resp.status_code = 202
    return resp


@bp.get("/api/relearn")
def relearn_status():
    return jsonify(_appliance().relearn_status())


@bp.post("/api/compact")
def compact():
    """Start folding the changes into a new bundle in the background (the catalog keeps answering)."""
    cat = _catalog()
    started = cat.compact_in_background()
    resp = jsonify({"started": started, "compacting": cat.compacting})
    resp.status_code = 202
    return resp
