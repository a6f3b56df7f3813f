"""Bearer tokens for Locust's shoppers, made with the standard library alone.

Compose's Locust runs in the stock ``locustio/locust`` image, which has neither Warren's code nor
PyJWT: so the load test signs its own HS256 JWTs here, with the claims ``shared/auth.py`` issues
and verifies (``tests/unit/test_api_auth.py`` checks that the API accepts them). The key is
``API_TOKEN_SECRET``: from the environment, else from the file ``API_TOKEN_SECRET_FILE`` names
(compose gives the locust container its secret file), else from ``./.env`` (``make load`` runs
from the repository).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import time
from pathlib import Path

TTL_SECONDS = 3600
# customer -> (token, when to sign a new one): each customer signs in once an hour.
_signed: dict[str, tuple[str, float]] = {}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def api_token_secret(env_file: Path = Path(".env")) -> str:
    """``API_TOKEN_SECRET`` from the environment, else from the file ``API_TOKEN_SECRET_FILE``
    names (compose's secret), else from ``env_file`` (a KEY=value line)."""
    if secret := os.environ.get("API_TOKEN_SECRET"):
        return secret
    if secret_file := os.environ.get("API_TOKEN_SECRET_FILE"):
        return Path(secret_file).read_text().strip()
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip() == "API_TOKEN_SECRET":
                return value.strip().strip("'\"")
    raise RuntimeError("API_TOKEN_SECRET is not set (environment or .env): see .env.example")


def customer_token(customer: str, secret: str, ttl: int = TTL_SECONDS) -> str:
    """A customer's signed token: ``sub``, ``role``, ``iss``, ``iat``, ``exp``, as Warren's."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"sub": customer, "role": "customer", "iss": "warren", "iat": now, "exp": now + ttl}
    signing_input = ".".join(
        _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@functools.cache
def _configured_secret() -> str:
    return api_token_secret()


def authorization(customer: str) -> dict[str, str]:
    """The ``Authorization`` header of ``customer``: one token per customer, signed again a
    minute before it expires."""
    token, renew_at = _signed.get(customer, ("", 0.0))
    if time.time() >= renew_at:
        token = customer_token(customer, _configured_secret())
        _signed[customer] = (token, time.time() + TTL_SECONDS - 60)
    return {"Authorization": f"Bearer {token}"}
