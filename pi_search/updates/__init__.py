"""Putting bundles in place on a kiosk: install with a self-check, pull over HTTP, confirm, whole fleets."""
