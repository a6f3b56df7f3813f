"""Notification: hears order lifecycle events and has Celery workers email the customer once."""
