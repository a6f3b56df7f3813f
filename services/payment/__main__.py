"""Run one payment consumer: ``python -m services.payment`` (start several: they compete)."""

from shared.runner import run_service

if __name__ == "__main__":
    run_service("services.payment.app:create_app", default_port=8002, description=__doc__)
