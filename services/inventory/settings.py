from shared.settings import WarrenSettings


class InventorySettings(WarrenSettings):
    service_name: str = "inventory"
    port: int = 8001
