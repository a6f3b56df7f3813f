"""Run one payment consumer: ``python -m services.payment`` (start several: they compete)."""

from services.payment.settings import PaymentSettings
from shared.runner import run_service

if __name__ == "__main__":
    run_service("services.payment.app:create_app", PaymentSettings, description=__doc__)
