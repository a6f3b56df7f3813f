"""Run the inventory service: ``python -m services.inventory``."""

from services.inventory.settings import InventorySettings
from shared.runner import run_service

if __name__ == "__main__":
    run_service("services.inventory.app:create_app", InventorySettings, description=__doc__)
