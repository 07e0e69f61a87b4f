"""Teaching items on the kiosk: the "add item" page and the API that adds, edits and removes items."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify, render_template, request

from ..barcodes.codes import keys, tidy
from ..barcodes.decode import read_codes
from ..barcodes.pictures import grey_for_codes
from ..errors import BundleError, ImageError, NothingFound, Unavailable
from ..images import decode
from .auth import page as _page
from .context import appliance as _appliance
from .context import config as _config
from .errors import no_catalog as _no_catalog
from .errors import no_catalog_message
from .lock import refuse_if_locked, teaching_state
from .uploads import decode_upload

log = logging.getLogger(__name__)

bp = Blueprint("pi_search_items", __name__, template_folder="templates")


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
    return _teaching().catalog


def _teaching():
    """The teaching service (``live.teaching.Teaching``) the appliance offers."""
    return _appliance().teaching


def _shots() -> list:
    """The uploaded shots as ``(rgb, kind)``: multipart fields ``image`` (repeated) and ``kind`` (same order,
    ``camera`` or ``photo``; default photo)."""
    files = request.files.getlist("image")
    kinds = request.form.getlist("kind")
    most = _teaching().max_shots
    if len(files) > most:
        raise ImageError(f"{len(files)} shots: send at most {most}")
    out = []
    with _appliance().upload_slot():  # like a search upload: two photos decoded at a time at most
        for n, f in enumerate(files):
            kind = kinds[n] if n < len(kinds) else "photo"
            out.append((decode_upload(f.read(), name=f.filename or f"shot {n + 1}"), kind))
    return out


def _item_json(taught) -> dict | None:
    info = taught.item
    if info is not None:
        info["thumb"] = f"/thumbs/{taught.id}"
    return info


def _barcode() -> str | None:
    """The form's ``barcode`` (codes separated by ``;``) tidied, "" to clear it, None when not sent;
    CatalogError (400) for an EAN/UPC number with a wrong check digit."""
    value = request.form.get("barcode")
    return None if value is None else tidy(value)


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
    teaching = _teaching()
    listing = teaching.listing(50)
    rows = []
    for it in listing.changes:
        d = it.as_dict()
        d["thumb"] = None if it.deleted else f"/thumbs/{it.id}"
        rows.append(d)
    folded = [{**f, "thumb": f"/thumbs/{f['id']}", "in_bundle": True, "deleted": False}
              for f in listing.folded]
    resp = jsonify({"items": rows, "folded": folded, "catalog_items": listing.items,
                    "compacting": cat.compacting, "last_compaction": cat.last_compaction,
                    "background": teaching.has_scene,
                    "no_catalog": None if cat.serving else no_catalog_message(cat.problem)})
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/api/items")
def add_item():
    """Teach an item: multipart ``title``, ``price``, ``id`` (optional) and one or more ``image`` shots."""
    cat = _catalog()
    try:
        barcode = _barcode() or None   # a wrong check digit is told before any photo is read
        taught = _teaching().add(request.form.get("title", ""), request.form.get("price") or None, _shots(),
                                 item_id=request.form.get("id") or None, barcode=barcode)
    except BundleError as exc:   # bad input (400), an id taken (409): raised by type (web/errors.py)
        if cat.serving:
            raise
        raise _no_catalog(cat.problem) from exc  # the bundle went away while the shots were embedded
    log.info("item %s taught from the page (%d shot(s))", taught.id, taught.shots)
    resp = jsonify({"item": _item_json(taught)})
    resp.status_code = 201
    return resp


@bp.route("/api/items/<path:item_id>", methods=["PATCH", "POST"])
def edit_item(item_id: str):
    """Edit an item: any of ``title``, ``price`` (empty clears it), ``barcode`` (empty clears it) and
    further ``image`` shots."""
    barcode = _barcode()   # a wrong check digit is told before any photo is read
    taught = _teaching().edit(item_id, title=request.form.get("title") or None,   # 400, 404: by type
                              price=request.form.get("price"), barcode=barcode, shots=_shots())
    return jsonify({"item": _item_json(taught)})


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
    left = _teaching().remove(item_id)   # no such item (404), already removed (409): raised by type
    return jsonify({"removed": item_id, "catalog_items": left})


@bp.post("/api/background")
def set_background():
    """Remember the empty scene (multipart ``image``, else the camera's current frame): it is taken out of
    every camera shot taught afterwards, so items taught at the counter do not match each other's counter."""
    upload = request.files.get("image")
    if upload is not None:
        with _appliance().upload_slot():
            rgb = decode_upload(upload.read(), name=upload.filename or "background")
    else:
        latest = _appliance().latest()
        if latest is None:
            raise Unavailable("no camera frame yet; try again in a moment")
        rgb = decode(latest.jpeg, name="the current frame")
    _teaching().set_scene(rgb)   # also kept for pi-search index relearn; an unreadable photo: 400 by type
    log.info("empty scene captured for teaching")
    return jsonify({"background": True})


@bp.delete("/api/background")
def clear_background():
    _teaching().clear_scene()
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
