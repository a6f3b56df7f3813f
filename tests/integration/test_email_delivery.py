"""The Celery task that sends emails: once, even when SMTP fails or a worker dies mid-send."""

from __future__ import annotations

import mailbox
import smtplib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from pymongo import MongoClient
from pymongo.collection import Collection

from cli.mail_sink import make_api
from services.notification.settings import NotificationSettings
from services.notification.worker import MAX_TAKEOVERS, EarlierEmailPendingError, deliver
from shared.testing.system import free_port


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    maildir = tmp_path / "mail"
    mailbox.Maildir(maildir, create=True)
    port = free_port()
    controller = Controller(Mailbox(maildir), hostname="127.0.0.1", port=port)
    controller.start()
    yield port, maildir
    controller.stop()


@pytest.fixture
def mail_api(smtp: tuple[int, Path]) -> Iterator[str]:
    """The sink's Mailpit-like API over the same Maildir (as `warren mail-sink` serves it)."""
    api = make_api(smtp[1], "127.0.0.1", free_port())
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{api.server_address[1]}"
    api.shutdown()


@pytest.fixture
def settings(mongo_url: str, smtp: tuple[int, Path], mail_api: str) -> NotificationSettings:
    return NotificationSettings(
        mongo_url=mongo_url,
        mongo_db_prefix=f"mail{uuid.uuid4().hex[:6]}",
        smtp_port=smtp[0],
        mail_api_url=mail_api,
    )


@pytest.fixture
def notifications(settings: NotificationSettings) -> Iterator[Collection]:
    """The notifications collection the worker reads, through one client closed at teardown."""
    with MongoClient(settings.mongo_url) as client:
        yield client[settings.mongo_db]["notifications"]


def queued(notifications: Collection, **fields: object) -> str:
    notification_id = str(uuid.uuid4())
    notifications.insert_one(
        {
            "_id": notification_id,
            "order_id": "o-1",
            "event_type": "order.confirmed",
            "to": "bugs@warren.example",
            "subject": "Your order is confirmed",
            "body": "Hello",
            "state": "queued",
            **fields,
        }
    )
    return notification_id


def state(notifications: Collection, notification_id: str) -> str:
    doc = notifications.find_one({"_id": notification_id})
    return doc["state"]


def sent(maildir: Path) -> list[str]:
    return [m["Message-ID"] for m in mailbox.Maildir(maildir, create=False)]


def test_an_email_is_sent_once(
    settings: NotificationSettings, smtp: tuple[int, Path], notifications: Collection
) -> None:
    notification_id = queued(notifications)
    assert deliver(notification_id, settings, task_id="t1") == "sent"
    assert deliver(notification_id, settings, task_id="t1") == "already sent"
    assert deliver(notification_id, settings, task_id="t2") == "already sent"
    assert sent(smtp[1]) == [f"<{notification_id}@warren>"]


def test_an_orders_email_waits_until_the_one_before_it_is_sent(
    settings: NotificationSettings, smtp: tuple[int, Path], notifications: Collection
) -> None:
    received = queued(notifications, event_type="order.placed")
    confirmed = queued(notifications, after=received, recorded_at=time.time())
    with pytest.raises(EarlierEmailPendingError):
        deliver(confirmed, settings, task_id="t1")
    assert state(notifications, confirmed) == "queued"  # its claim given back for the retry
    assert sent(smtp[1]) == []
    assert deliver(received, settings, task_id="t2") == "sent"
    assert deliver(confirmed, settings, task_id="t1") == "sent"
    assert sorted(sent(smtp[1])) == sorted([f"<{received}@warren>", f"<{confirmed}@warren>"])


def test_an_email_waits_for_the_one_before_it_only_so_long(
    settings: NotificationSettings, smtp: tuple[int, Path], notifications: Collection
) -> None:
    stuck = queued(notifications, event_type="order.placed")
    long_ago = time.time() - settings.order_wait_seconds - 1
    confirmed = queued(notifications, after=stuck, recorded_at=long_ago)
    assert deliver(confirmed, settings, task_id="t1") == "sent"
    assert sent(smtp[1]) == [f"<{confirmed}@warren>"]


def test_an_smtp_failure_gives_the_claim_back_so_the_retry_sends_it(
    settings: NotificationSettings, smtp: tuple[int, Path], notifications: Collection
) -> None:
    notification_id = queued(notifications)
    down = settings.model_copy(update={"smtp_port": free_port()})  # nobody listens there
    with pytest.raises((OSError, smtplib.SMTPException)):
        deliver(notification_id, down, task_id="t1")
    assert state(notifications, notification_id) == "queued"
    assert deliver(notification_id, settings, task_id="t1") == "sent"
    assert sent(smtp[1]) == [f"<{notification_id}@warren>"]


def test_a_redelivered_task_sends_nothing_while_its_first_run_may_still_be_sending(
    settings: NotificationSettings, smtp: tuple[int, Path], notifications: Collection
) -> None:
    """Reproduced: a same-id task redelivered after a connection loss re-took its own claim
    and sent at once, while the first run was still sending (two emails, 170 ms apart)."""
    notification_id = queued(
        notifications, state="sending", claimed_by="t1", claimed_at=time.time()
    )
    assert deliver(notification_id, settings, task_id="t2") == "being sent by another task"
    assert deliver(notification_id, settings, task_id="t1") == "being sent by another task"
    assert sent(smtp[1]) == []


def test_an_abandoned_claim_is_taken_over_after_a_while(
    settings: NotificationSettings, smtp: tuple[int, Path], notifications: Collection
) -> None:
    notification_id = queued(notifications, state="sending", claimed_by="t1", claimed_at=0.0)
    assert deliver(notification_id, settings, task_id="t9") == "sent"
    assert len(sent(smtp[1])) == 1


def test_an_email_accepted_before_its_worker_died_is_marked_sent_not_sent_again(
    settings: NotificationSettings, smtp: tuple[int, Path], notifications: Collection
) -> None:
    notification_id = queued(notifications)
    assert deliver(notification_id, settings, task_id="t1") == "sent"
    # The worker "died" after the SMTP server accepted, before marking it sent.
    notifications.update_one(
        {"_id": notification_id}, {"$set": {"state": "sending", "claimed_at": 0.0}}
    )
    assert deliver(notification_id, settings, task_id="t2") == "found delivered"
    assert state(notifications, notification_id) == "sent"
    assert sent(smtp[1]) == [f"<{notification_id}@warren>"]


def test_an_email_that_can_never_be_built_fails_for_good_instead_of_staying_claimed(
    settings: NotificationSettings, smtp: tuple[int, Path], notifications: Collection
) -> None:
    """Reproduced after API fuzzing: a line break in the address raised while the To header
    was built, before the claim was given back -- 'sending' for ever, the ledger red."""
    notification_id = queued(notifications, to="victim@evil.example\nBcc: x@y")
    assert deliver(notification_id, settings, task_id="t1") == "failed"
    doc = notifications.find_one({"_id": notification_id})
    assert doc["state"] == "failed" and "cannot build" in doc["failure"]
    assert sent(smtp[1]) == []


def test_an_email_whose_sending_keeps_killing_its_worker_ends_failed(
    settings: NotificationSettings, smtp: tuple[int, Path], notifications: Collection
) -> None:
    notification_id = queued(
        notifications, state="sending", claimed_at=0.0, takeovers=MAX_TAKEOVERS - 1
    )
    assert deliver(notification_id, settings, task_id="t9") == "failed"
    assert state(notifications, notification_id) == "failed"
    assert sent(smtp[1]) == []


class CountingMailbox(Mailbox):
    """A Maildir sink that counts SMTP sessions (one EHLO per connection)."""

    sessions = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
        CountingMailbox.sessions += 1
        session.host_name = hostname
        return responses


def test_emails_share_one_smtp_connection_and_survive_the_server_dropping_it(
    settings: NotificationSettings, tmp_path: Path, notifications: Collection
) -> None:
    maildir = tmp_path / "counted"
    mailbox.Maildir(maildir, create=True)
    port = free_port()
    counted = settings.model_copy(update={"smtp_port": port})
    CountingMailbox.sessions = 0
    controller = Controller(CountingMailbox(maildir), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        first = [queued(notifications) for _ in range(3)]
        for notification_id in first:
            assert deliver(notification_id, counted) == "sent"
        assert CountingMailbox.sessions == 1  # three emails, one connection
        # The server goes away and comes back: the kept connection is dead.
        controller.stop()
        controller = Controller(CountingMailbox(maildir), hostname="127.0.0.1", port=port)
        controller.start()
        later = queued(notifications)
        assert deliver(later, counted) == "sent"
    finally:
        controller.stop()
    assert CountingMailbox.sessions == 2
    assert sorted(sent(maildir)) == sorted(f"<{n}@warren>" for n in [*first, later])
    assert {state(notifications, n) for n in [*first, later]} == {"sent"}


def test_an_email_sent_but_not_marked_is_not_failed_and_so_not_sent_again(
    settings: NotificationSettings,
    smtp: tuple[int, Path],
    monkeypatch: pytest.MonkeyPatch,
    notifications: Collection,
) -> None:
    from pymongo.errors import AutoReconnect

    import services.notification.worker as worker

    def database_gone(*_: object) -> None:
        raise AutoReconnect("the database went away after the SMTP server accepted")

    monkeypatch.setattr(worker, "_mark_sent", database_gone)
    notification_id = queued(notifications)
    # No exception: a failed task would be retried by Celery and send the email twice.
    assert deliver(notification_id, settings, task_id="t-1") == "sent"
    assert sent(smtp[1]) == [f"<{notification_id}@warren>"]


class RefusingMailbox(Mailbox):
    """An SMTP server that refuses every recipient for good (550)."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        return "550 no such user here"


def test_an_email_the_server_refuses_for_good_fails_instead_of_retrying_for_ever(
    settings: NotificationSettings, tmp_path: Path, notifications: Collection
) -> None:
    maildir = tmp_path / "refusing"
    mailbox.Maildir(maildir, create=True)
    port = free_port()
    controller = Controller(RefusingMailbox(maildir), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        notification_id = queued(notifications)
        refusing = settings.model_copy(update={"smtp_port": port})
        assert deliver(notification_id, refusing, task_id="t1") == "failed"
    finally:
        controller.stop()
    doc = notifications.find_one({"_id": notification_id})
    assert doc["state"] == "failed" and "550" in doc["failure"]


def recipients(maildir: Path) -> list[str]:
    """Each email's envelope recipients, as the SMTP server got them (RCPT TO)."""
    return [m["X-RcptTo"] for m in mailbox.Maildir(maildir, create=False)]


def test_the_email_goes_to_its_one_address_and_from_the_shop(
    settings: NotificationSettings, smtp: tuple[int, Path], notifications: Collection
) -> None:
    notification_id = queued(notifications, to="bugs-bunny@customers.warren.example")
    assert deliver(notification_id, settings, task_id="t1") == "sent"
    [email] = mailbox.Maildir(smtp[1], create=False)
    assert email["X-RcptTo"] == "bugs-bunny@customers.warren.example"
    assert email["X-MailFrom"] == "shop@warren.example"


def test_a_recorded_recipient_that_is_not_one_address_fails_and_mails_no_one(
    settings: NotificationSettings, smtp: tuple[int, Path], notifications: Collection
) -> None:
    """Reproduced: SMTP took the recipients from the To header, so a customer id such as
    ``victim@evil.example,x`` (recorded by an older Warren) mailed an outside address."""
    notification_id = queued(notifications, to="victim@evil.example,x@customers.warren.example")
    assert deliver(notification_id, settings, task_id="t1") == "failed"
    assert recipients(smtp[1]) == []
    doc = notifications.find_one({"_id": notification_id})
    assert doc["state"] == "failed" and "is not one email address" in doc["failure"]
