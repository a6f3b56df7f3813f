"""Who calls the order API: bearer tokens (JWT, RFC 7519), HS256, signed with ``API_TOKEN_SECRET``.

A token names its subject (``sub``: a customer id, or an operator's name, both of the customer
id's pattern) and a role: a *customer* places orders and reads their own; an *operator* reads
anyone's. The order service verifies; ``warren token``, ``warren demo``, the load tools and the
tests issue, with the same key from the same settings. One shared key (HMAC) rather than a key
pair, because here the issuer and the verifier are one operator's tools: with an identity
provider of its own, the API would verify the provider's public key instead (RS256 or EdDSA,
from its JWKS) and issue nothing (docs/14-security.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

import jwt
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from shared.contracts import CUSTOMER_ID_MAX_LENGTH, CUSTOMER_ID_PATTERN
from shared.settings import SecretFilesFirst

Role = Literal["customer", "operator"]
CUSTOMER: Role = "customer"
OPERATOR: Role = "operator"
ISSUER = "warren"
ALGORITHM = "HS256"
# HS256's key should be as long as its hash (32 bytes): shorter ones can be brute-forced.
MIN_SECRET_LENGTH = 32
DEFAULT_TTL = timedelta(hours=24)
# The issuer's clock and the API's may differ a little (a laptop and a container).
LEEWAY = timedelta(seconds=10)
# Far longer than any token Warren issues; a longer header is refused before it is parsed.
MAX_TOKEN_LENGTH = 2048
REQUIRED_CLAIMS = ["sub", "role", "iss", "iat", "exp"]


class TokenSettings(SecretFilesFirst):
    """The key that signs and verifies API tokens (``API_TOKEN_SECRET``; ``.env`` holds a
    development one). The order service verifies with it; whatever issues tokens reads it too."""

    # A settings error never shows the value it refused: this one is a secret.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    api_token_secret: SecretStr = Field(
        description="HS256 key of the order API's bearer tokens (at least 32 characters)."
    )

    @field_validator("api_token_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"at least {MIN_SECRET_LENGTH} characters; make one with "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value


class InvalidTokenError(Exception):
    """A token that proves nothing. Its message is short, fixed text: safe to show a client."""


@dataclass(frozen=True)
class Principal:
    """Who a valid token says the caller is."""

    subject: str  # the customer id (an operator's name, for an operator)
    role: Role

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR


def is_customer_id(subject: object) -> bool:
    """Whether ``subject`` may name a customer (or an operator): the API's customer id rules."""
    return (
        isinstance(subject, str)
        and len(subject) <= CUSTOMER_ID_MAX_LENGTH
        and re.fullmatch(CUSTOMER_ID_PATTERN, subject) is not None
    )


def issue(
    subject: str,
    role: Role = CUSTOMER,
    *,
    secret: SecretStr | str,
    ttl: timedelta = DEFAULT_TTL,
    now: datetime | None = None,
) -> str:
    """A signed token for ``subject`` in ``role``, valid for ``ttl`` from ``now``."""
    if not is_customer_id(subject):
        raise ValueError(f"{subject!r} is not a customer id (letters, digits, '.', '_', '-')")
    if role not in get_args(Role):
        raise ValueError(f"role must be one of {get_args(Role)}")
    issued = now or datetime.now(UTC)
    claims = {"sub": subject, "role": role, "iss": ISSUER, "iat": issued, "exp": issued + ttl}
    return jwt.encode(claims, _key(secret), algorithm=ALGORITHM)


# --8<-- [start:verify]
# PyJWT's errors, as a client may read them: what is wrong, never the token or the library's text.
REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted"),
    (jwt.InvalidSignatureError, "the token's signature does not match"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim"),
    (jwt.InvalidIssuerError, "the token is not Warren's"),
    (jwt.PyJWTError, "the token is malformed"),
)


def verify(token: str, *, secret: SecretStr | str) -> Principal:
    """The principal of a valid token. Raises :class:`InvalidTokenError` for anything else: a
    bad signature (another key), an algorithm but HS256 (``none`` included), an expired token,
    a missing claim, another issuer, a subject that is not a customer id, an unknown role."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidTokenError("the token is too long")
    try:
        claims = jwt.decode(
            token,
            _key(secret),
            algorithms=[ALGORITHM],  # never the token's own choice
            issuer=ISSUER,
            leeway=LEEWAY,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.PyJWTError as exc:
        reason = next(text for kind, text in REASONS if isinstance(exc, kind))
        raise InvalidTokenError(reason) from None
    if not is_customer_id(claims["sub"]):
        raise InvalidTokenError("the token's subject is not a customer id")
    if claims["role"] not in get_args(Role):
        raise InvalidTokenError("the token's role is unknown")
    return Principal(subject=claims["sub"], role=claims["role"])
    # --8<-- [end:verify]


def bearer(
    subject: str,
    role: Role = CUSTOMER,
    *,
    secret: SecretStr | str | None = None,
    ttl: timedelta = DEFAULT_TTL,
) -> dict[str, str]:
    """The ``Authorization`` header of a fresh token, signed with ``secret`` -- by default the
    configured one (:class:`TokenSettings`: the environment, then ``.env``)."""
    key = secret if secret is not None else configured_secret()
    return {"Authorization": f"Bearer {issue(subject, role, secret=key, ttl=ttl)}"}


class SecretNotConfiguredError(ValueError):
    """API_TOKEN_SECRET is missing or too short: what is wrong, never the value."""


def configured_secret() -> SecretStr:
    """``API_TOKEN_SECRET`` as configured: the environment, then ``.env``."""
    try:
        return TokenSettings().api_token_secret
    except ValidationError as exc:
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise SecretNotConfiguredError(
            f"API_TOKEN_SECRET (environment or .env): {reasons}"
        ) from None


def _key(secret: SecretStr | str) -> str:
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret
