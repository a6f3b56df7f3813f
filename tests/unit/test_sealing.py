"""Sealing the payment token: only the holder of the private key opens it, only for the order
it was sealed for, nothing altered opens at all, and an older key still opens after a rotation."""

from __future__ import annotations

import base64

import pytest

from shared.contracts import SealedValue
from shared.sealing import (
    RecipientKey,
    SealingError,
    UnknownKeyError,
    generate_key,
    private_key_from_text,
    private_keys_from_text,
    private_text,
    public_key_from_text,
    public_text,
    seal,
    unseal,
)

PAYMENT_KEY = generate_key()
KEYS = {"pay-2026-11": PAYMENT_KEY}


def sealed_visa(order_id: str = "order-1", kid: str = "pay-2026-11") -> SealedValue:
    return seal(PAYMENT_KEY.public_key(), kid, "tok_visa", aad=order_id)


def flip_a_byte(text: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    raw[0] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def test_the_payment_key_opens_what_was_sealed_for_it() -> None:
    assert unseal(KEYS, sealed_visa(), aad="order-1") == "tok_visa"


def test_the_sealed_value_says_nothing_of_the_token() -> None:
    sealed = sealed_visa()
    assert "tok_visa" not in sealed.model_dump_json()
    assert sealed.kid == "pay-2026-11"
    # A fresh ephemeral key and nonce each time: the same token never looks the same twice.
    assert sealed_visa().ciphertext != sealed.ciphertext


def test_a_token_moved_to_another_order_does_not_open() -> None:
    with pytest.raises(SealingError, match="sealed for another order"):
        unseal(KEYS, sealed_visa("order-1"), aad="order-2")


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "epk"])
def test_a_tampered_sealed_value_does_not_open(field: str) -> None:
    sealed = sealed_visa()
    tampered = sealed.model_copy(update={field: flip_a_byte(getattr(sealed, field))})
    with pytest.raises(SealingError) as refused:
        unseal(KEYS, tampered, aad="order-1")
    assert "tok_visa" not in str(refused.value)


def test_a_relabelled_key_id_does_not_open_with_another_key() -> None:
    """The key id is bound into the key derivation: relabelling a value does not help."""
    other = generate_key()
    sealed = seal(other.public_key(), "other", "tok_visa", aad="order-1")
    relabelled = sealed.model_copy(update={"kid": "pay-2026-11"})
    with pytest.raises(SealingError):
        unseal({**KEYS, "other": other}, relabelled, aad="order-1")


def test_an_unknown_key_id_is_named_in_a_clear_error() -> None:
    sealed = sealed_visa(kid="pay-2027-01")
    with pytest.raises(UnknownKeyError, match="'pay-2027-01', which is not held here") as refused:
        unseal(KEYS, sealed, aad="order-1")
    assert "held: pay-2026-11" in str(refused.value)


def test_after_a_rotation_the_previous_key_still_opens_what_is_in_flight() -> None:
    in_flight = sealed_visa(kid="pay-2026-11")  # sealed before the rotation
    new_key = generate_key()
    after = RecipientKey("pay-2027-01", new_key.public_key()).seal("tok_visa", "order-2")
    payment_holds = {"pay-2027-01": new_key, "pay-2026-11": PAYMENT_KEY}
    assert unseal(payment_holds, in_flight, aad="order-1") == "tok_visa"
    assert unseal(payment_holds, after, aad="order-2") == "tok_visa"
    # Once the previous key is retired, what was sealed for it no longer opens.
    with pytest.raises(UnknownKeyError):
        unseal({"pay-2027-01": new_key}, in_flight, aad="order-1")


def test_keys_survive_their_text_form() -> None:
    key = generate_key()
    assert len(private_text(key)) == len(public_text(key)) == 43
    again = private_key_from_text(private_text(key))
    sealed = seal(public_key_from_text(public_text(key)), "k", "tok_visa", aad="o")
    assert unseal({"k": again}, sealed, aad="o") == "tok_visa"


def test_a_malformed_key_is_refused_by_its_id_and_never_echoed() -> None:
    with pytest.raises(SealingError, match="key 'old': a private key must be 32 bytes") as bad:
        private_keys_from_text({"old": "c2hvcnQ"})
    assert "c2hvcnQ" not in str(bad.value)
    with pytest.raises(SealingError, match="not base64url"):
        public_key_from_text("not base64 at all!")
