"""The demo catalog: a dozen SKUs with price and stock. Seeded by ``warren seed``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogItem:
    sku: str
    name: str
    price_cents: int
    stock: int


CATALOG: tuple[CatalogItem, ...] = (
    CatalogItem("RABBIT-PLUSH", "Rabbit plush toy", 1999, 1000),
    CatalogItem("CARROT-MUG", "Carrot-shaped mug", 1250, 1000),
    CatalogItem("BURROW-LAMP", "Burrow night lamp", 4500, 500),
    CatalogItem("HAY-CUSHION", "Hay-bale cushion", 2990, 500),
    CatalogItem("WARREN-MAP", "Map of the warren (poster)", 900, 2000),
    CatalogItem("CLOVER-TEA", "Clover tea, 20 bags", 650, 2000),
    CatalogItem("EAR-MUFFS", "Long-ear muffs", 1800, 800),
    CatalogItem("HOP-SOCKS", "Hopping socks, pair", 1100, 1500),
    CatalogItem("TUNNEL-KIT", "Tunnel building kit", 8900, 200),
    CatalogItem("LETTUCE-BAG", "Reusable lettuce bag", 450, 3000),
    CatalogItem("MOON-RABBIT", "Moon rabbit figurine", 3500, 300),
    CatalogItem("LAST-CARROT", "The last golden carrot", 99900, 1),
)
