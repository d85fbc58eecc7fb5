"""outbound_fax: send a fax through a provider, follow its status, cancel it."""

from __future__ import annotations

from typing import Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class SendFax(msgspec.Struct, frozen=True, kw_only=True):
    """A fax to one number: either document bytes (with their content type) or a content URL."""

    to: str
    document: bytes | None = None
    content_type: str = "application/pdf"
    filename: str = "document.pdf"
    content_url: str | None = None
    caller_id: str | None = None
    header_text: str | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)


class FaxQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Name a fax job the provider accepted earlier."""

    job_id: str


class FaxJob(msgspec.Struct, frozen=True, kw_only=True):
    """A fax job as the provider reports it. `status` is one of queued, in_progress, success,
    failed, cancelled; `provider_status` keeps the provider's own word."""

    job_id: str
    status: str
    provider_status: str | None = None
    pages: int | None = None
    error_code: str | None = None
    error_message: str | None = None


SPEC: Final = CategorySpec(
    kind="outbound_fax",
    description="Send faxes through a cloud or on-premises provider.",
    dispatch=Dispatch.FIRST_SUCCESS,
    methods={
        "send_fax": MethodSpec(SendFax, FaxJob),
        "get_status": MethodSpec(FaxQuery, FaxJob),
        "cancel_fax": MethodSpec(FaxQuery, FaxJob),
    },
)
