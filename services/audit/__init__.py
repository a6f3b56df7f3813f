"""Audit: records every event on shop.events -- who published it, when, how it came, a forgery
too -- and the broker's own security events, in an append-only store."""
