"""Order: the HTTP API, the event-sourced order aggregate, its read model and its outbox."""
