"""Warren's plumbing: event contracts, topology, broker factory, storage, settings, observability.

Domain logic lives in the services; nothing in here knows what an order *means*.
"""
