"""webhook_handler: answer an inbound HTTP request from a provider, routed to one tenant."""

from __future__ import annotations

from typing import Final

import msgspec

from ._spec import CategorySpec, Dispatch, MethodSpec


class WebhookRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The request as core saw it, after size limits and signature checks."""

    route_id: str
    method: str
    path: str  # the rest of the path after /webhook/{slug}/{tenant}
    query: list[tuple[str, str]] = msgspec.field(default_factory=list)
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: bytes = b""
    client_address: str | None = None
    verified: bool = False  # core verified the signature before calling


class WebhookResponse(msgspec.Struct, frozen=True, kw_only=True):
    """What to answer the provider; the host filters hop-by-hop and sensitive headers."""

    status: int = 204
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: bytes = b""


SPEC: Final = CategorySpec(
    kind="webhook_handler",
    description="Inbound HTTP callbacks from providers (Twilio, Stripe, fax providers).",
    dispatch=Dispatch.FIRST_SUCCESS,
    methods={"handle": MethodSpec(WebhookRequest, WebhookResponse)},
)
