"""Every category's argument and result structs, re-exported for plugin authors."""

from __future__ import annotations

from protocol.categories.audit_sink import AuditEvent
from protocol.categories.auth_provider import AuthResult, Credentials
from protocol.categories.encryption_provider import (
    Ciphertext,
    DecryptRequest,
    EncryptRequest,
    Plaintext,
)
from protocol.categories.identity_provider import Identity, IdentityQuery
from protocol.categories.input_validator import ValidationInput, ValidationResult
from protocol.categories.jwt_customizer import JwtClaims
from protocol.categories.lifecycle_hook import LifecycleEvent
from protocol.categories.metrics_collector import MetricPoint, MetricsBatch
from protocol.categories.notification_channel import (
    NotificationReceipt,
    NotificationStatusQuery,
    SendNotification,
)
from protocol.categories.outbound_fax import FaxJob, FaxQuery, SendFax
from protocol.categories.policy_engine import PolicyDecision, PolicyInput
from protocol.categories.rate_limiter import RateLimitDecision, RateLimitQuery
from protocol.categories.storage_backend import (
    StorageKey,
    StorageKeys,
    StorageList,
    StoragePut,
    StorageValue,
)
from protocol.categories.webhook_handler import WebhookRequest, WebhookResponse

__all__ = [
    "AuditEvent",
    "AuthResult",
    "Ciphertext",
    "Credentials",
    "DecryptRequest",
    "EncryptRequest",
    "FaxJob",
    "FaxQuery",
    "Identity",
    "IdentityQuery",
    "JwtClaims",
    "LifecycleEvent",
    "MetricPoint",
    "MetricsBatch",
    "NotificationReceipt",
    "NotificationStatusQuery",
    "Plaintext",
    "PolicyDecision",
    "PolicyInput",
    "RateLimitDecision",
    "RateLimitQuery",
    "SendFax",
    "SendNotification",
    "StorageKey",
    "StorageKeys",
    "StorageList",
    "StoragePut",
    "StorageValue",
    "ValidationInput",
    "ValidationResult",
    "WebhookRequest",
    "WebhookResponse",
]
