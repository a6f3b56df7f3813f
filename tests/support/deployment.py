"""What every deployed service's MONGO_URL asks of MongoDB, under compose and on Kubernetes: its
users live in admin, and it writes to the replica set rs0 with majority, journaled, retryable
writes (docs/18-scaling.md)."""

MONGO_URL_OPTIONS = {
    "authSource": "admin",
    "replicaSet": "rs0",
    "w": "majority",
    "journal": "true",
    "retryWrites": "true",
}
