"""Sealing: encrypt one small value (the payment token) so that only one service can read it.

The sender holds the recipient's **public** key; only the recipient holds the private one. So
the order service can seal a token for payment without being able to open it again, and
inventory, notification, the broker, a DLQ or a database dump see ciphertext only.

The scheme (ECIES, in the spirit of HPKE's base mode, RFC 9180)::

    ephemeral key pair (X25519, a fresh one per value)
    shared secret = X25519(ephemeral private, recipient public)
    key           = HKDF-SHA256(shared secret, salt = ephemeral public + recipient public,
                                info = "warren sealed value" + alg + kid)          -> 32 bytes
    ciphertext    = AES-256-GCM(key, random 12-byte nonce, value, aad)

The AEAD's associated data is given by the caller -- the order id for the payment token --
and is not stored: a sealed token copied into another order's message does not open there.
Authenticated encryption: a changed byte (ciphertext, nonce, ephemeral key or key id) makes
:func:`unseal` fail instead of returning something else.

``kid`` names the recipient's key and travels with the ciphertext, so the recipient may hold
several private keys -- the current one and those it replaced -- and keys can be rotated
while sealed values are in flight (docs/14-security.md, "Key rotation").

Keys are X25519 keys, written as base64url without padding (the ``x`` / ``d`` of a JWK,
RFC 8037): 43 characters, safe unquoted in ``.env``, a shell or YAML.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.contracts import SEALING_ALGORITHM, SealedValue

_NONCE_BYTES = 12
_KEY_BYTES = 32


class SealingError(ValueError):
    """A sealed value that cannot be opened: altered, sealed for another ``aad`` (another
    order), or malformed. The message never contains the value."""


class UnknownKeyError(SealingError):
    """The value was sealed for a key id this service does not hold."""


@dataclass(frozen=True)
class RecipientKey:
    """What a sender needs to seal for a recipient: its public key and that key's id."""

    kid: str
    public_key: X25519PublicKey

    def seal(self, plaintext: str, aad: str) -> SealedValue:
        return seal(self.public_key, self.kid, plaintext, aad)


# --- keys as text ----------------------------------------------------------------------------


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise SealingError(f"{what} is not base64url") from None


def _raw_key(text: str, what: str) -> bytes:
    raw = _b64decode(text.strip(), what)
    if len(raw) != _KEY_BYTES:
        raise SealingError(f"{what} must be {_KEY_BYTES} bytes (43 base64url characters)")
    return raw


def public_key_from_text(text: str) -> X25519PublicKey:
    """An X25519 public key from its base64url text (``PAYMENT_TOKEN_PUBLIC_KEY``)."""
    return X25519PublicKey.from_public_bytes(_raw_key(text, "the public key"))


def private_key_from_text(text: str) -> X25519PrivateKey:
    """An X25519 private key from its base64url text (a value of ``PAYMENT_TOKEN_KEYS``)."""
    return X25519PrivateKey.from_private_bytes(_raw_key(text, "a private key"))


def private_keys_from_text(keys: Mapping[str, str]) -> dict[str, X25519PrivateKey]:
    """``{kid: base64url private key}`` -> ``{kid: key}``; a bad key is named by its id."""
    parsed = {}
    for kid, text in keys.items():
        try:
            parsed[kid] = private_key_from_text(text)
        except SealingError as exc:
            raise SealingError(f"key {kid!r}: {exc}") from None
    return parsed


def public_text(private_key: X25519PrivateKey) -> str:
    return _b64encode(private_key.public_key().public_bytes_raw())


def private_text(private_key: X25519PrivateKey) -> str:
    return _b64encode(private_key.private_bytes_raw())


def generate_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


# --- seal and unseal -------------------------------------------------------------------------


def _derive_key(shared_secret: bytes, epk: bytes, recipient: bytes, kid: str) -> bytes:
    info = f"warren sealed value|{SEALING_ALGORITHM}|{kid}".encode()
    hkdf = HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=epk + recipient, info=info)
    return hkdf.derive(shared_secret)


# --8<-- [start:seal]
def seal(public_key: X25519PublicKey, kid: str, plaintext: str, aad: str) -> SealedValue:
    """Encrypt ``plaintext`` for the holder of the private key ``kid``, bound to ``aad``."""
    ephemeral = X25519PrivateKey.generate()
    epk = ephemeral.public_key().public_bytes_raw()
    key = _derive_key(ephemeral.exchange(public_key), epk, public_key.public_bytes_raw(), kid)
    nonce = os.urandom(_NONCE_BYTES)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext.encode(), aad.encode())
    return SealedValue(
        kid=kid, epk=_b64encode(epk), nonce=_b64encode(nonce), ciphertext=_b64encode(ciphertext)
    )
    # --8<-- [end:seal]


# --8<-- [start:unseal]
def unseal(private_keys: Mapping[str, X25519PrivateKey], sealed: SealedValue, aad: str) -> str:
    """Open ``sealed`` with the private key it names; the same ``aad`` as when it was sealed.

    Raises :class:`UnknownKeyError` for a key id not in ``private_keys``, and
    :class:`SealingError` for anything altered, sealed for another ``aad``, or malformed.
    """
    private_key = private_keys.get(sealed.kid)
    if private_key is None:
        raise UnknownKeyError(
            f"sealed for key {sealed.kid!r}, which is not held here "
            f"(held: {', '.join(sorted(private_keys)) or 'none'})"
        )
    epk = _b64decode(sealed.epk, "epk")
    try:
        shared_secret = private_key.exchange(X25519PublicKey.from_public_bytes(epk))
    except ValueError:  # not 32 bytes, or a low-order point
        raise SealingError("the ephemeral key is not a usable X25519 public key") from None
    recipient = private_key.public_key().public_bytes_raw()
    key = _derive_key(shared_secret, epk, recipient, sealed.kid)
    try:
        plaintext = AESGCM(key).decrypt(
            _b64decode(sealed.nonce, "nonce"),
            _b64decode(sealed.ciphertext, "ciphertext"),
            aad.encode(),
        )
    except (InvalidTag, ValueError):
        raise SealingError(
            "the sealed value does not open: altered, or sealed for another order"
        ) from None
    return plaintext.decode()
    # --8<-- [end:unseal]
