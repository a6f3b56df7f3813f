"""Payment: charges a simulated gateway for reserved orders; runs as competing consumers."""
