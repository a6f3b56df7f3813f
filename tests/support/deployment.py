"""What every deployed service's MONGO_URL asks of MongoDB, under compose and on Kubernetes: its
users live in admin, and it writes to the replica set rs0 with majority, journaled, retryable
writes (docs/18-scaling.md). And how a rabbitmq.conf file reads."""

from pathlib import Path

MONGO_URL_OPTIONS = {
    "authSource": "admin",
    "replicaSet": "rs0",
    "w": "majority",
    "journal": "true",
    "retryWrites": "true",
}


def rabbitmq_conf(path: Path) -> dict[str, str]:
    """A rabbitmq.conf file's settings (key = value, comments dropped)."""
    return dict(
        (part.strip() for part in line.split("=", 1))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
