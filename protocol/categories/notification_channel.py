"""notification_channel: deliver a message (SMS, email, push, voice) to a recipient."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class SendNotification(msgspec.Struct, frozen=True, kw_only=True):
    """A message for one recipient; `kind` names the medium (sms, email, push, voice, chat)."""

    recipient: str
    body: str
    kind: str = "sms"
    subject: str | None = None
    sender: str | None = None
    status_callback_url: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class NotificationStatusQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Ask for the delivery state of a message the channel accepted earlier."""

    message_id: str


class NotificationReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """The provider's view of a message: its id and delivery status."""

    message_id: str
    status: str
    error_code: str | None = None
    error_message: str | None = None


SPEC: Final = CategorySpec(
    kind="notification_channel",
    description="Email, SMS, push, chat and voice delivery.",
    dispatch=Dispatch.FIRST_SUCCESS,
    methods={
        "send": MethodSpec(SendNotification, NotificationReceipt),
        "get_status": MethodSpec(NotificationStatusQuery, NotificationReceipt),
    },
)
