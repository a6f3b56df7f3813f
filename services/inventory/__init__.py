"""Inventory: the catalog, quotes, and stock reservations (reserve, commit, release)."""
