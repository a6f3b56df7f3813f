"""Run the order service (HTTP API on :8000, docs at /docs): ``python -m services.order``."""

from services.order.settings import OrderSettings
from shared.runner import run_service

if __name__ == "__main__":
    run_service("services.order.app:create_app", OrderSettings, description=__doc__)
