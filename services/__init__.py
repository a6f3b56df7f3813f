"""Warren's four services: order, inventory, payment, notification."""
