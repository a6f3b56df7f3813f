"""Run the audit service: ``python -m services.audit`` (it records every event on shop.events
and the broker's security events; `warren audit <order id>` reads them)."""

from services.audit.settings import AuditSettings
from shared.runner import run_service

if __name__ == "__main__":
    run_service("services.audit.app:create_app", AuditSettings, description=__doc__)
