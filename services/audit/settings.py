from shared.settings import WarrenSettings


class AuditSettings(WarrenSettings):
    service_name: str = "audit"
    port: int = 8004
