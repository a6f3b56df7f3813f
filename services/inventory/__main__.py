"""Run the inventory service: ``python -m services.inventory``."""

from shared.runner import run_service

if __name__ == "__main__":
    run_service("services.inventory.app:create_app", default_port=8001, description=__doc__)
