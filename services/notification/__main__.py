"""Run the notification service: ``python -m services.notification`` (emails need a worker too)."""

from services.notification.settings import NotificationSettings
from shared.runner import run_service

if __name__ == "__main__":
    run_service("services.notification.app:create_app", NotificationSettings, description=__doc__)
