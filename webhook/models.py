"""Typed models of Alertmanager's webhook payload, version 4.

Alertmanager (``notify/webhook``) POSTs one JSON object per notification of an alert group::

    {"version": "4", "groupKey": "...", "truncatedAlerts": 0, "status": "firing",
     "receiver": "...", "groupLabels": {...}, "commonLabels": {...},
     "commonAnnotations": {...}, "externalURL": "...",
     "alerts": [{"status": "firing", "labels": {...}, "annotations": {...},
                 "startsAt": "...", "endsAt": "...", "generatorURL": "...",
                 "fingerprint": "..."}]}

Every field that Alertmanager always sends is required here, so a payload that misses one is a
400, not a guess. Unknown extra fields are ignored (a newer Alertmanager may add some).
An incident is one firing episode of one alert: its id joins the alert's fingerprint and its
``startsAt``, which every re-send, every HA peer and every parallel delivery repeat unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

FINGERPRINT_PATTERN = r"^[0-9a-fA-F]{1,64}$"
"""Alertmanager's fingerprints are 64-bit hashes printed as 16 hex digits."""


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class Alert(_Model):
    """One alert of a notification."""

    status: Literal["firing", "resolved"] = Field(description="State of this alert.")
    labels: dict[str, str] = Field(description="Identifying labels (alertname, model, ...).")
    annotations: dict[str, str] = Field(description="summary, description, runbook_url, ...")
    starts_at: AwareDatetime = Field(alias="startsAt", description="When the alert began.")
    ends_at: AwareDatetime = Field(
        alias="endsAt", description="When it resolved; Go's zero time while firing."
    )
    generator_url: str = Field(alias="generatorURL", description="Link to the rule's source.")
    fingerprint: str = Field(
        pattern=FINGERPRINT_PATTERN, description="Hash of the labels: the alert's identity."
    )

    @property
    def incident_id(self) -> str:
        """``<fingerprint>-<startsAt, UTC, microseconds>``: one id per firing episode."""
        return incident_id(self.fingerprint, self.starts_at)


class WebhookPayload(_Model):
    """A notification: a group of alerts sent to one receiver."""

    version: Literal["4"] = Field(description="Payload version; only 4 exists.")
    group_key: str = Field(alias="groupKey", description="Identifies the alert group.")
    truncated_alerts: int = Field(
        0,
        ge=0,
        alias="truncatedAlerts",
        description="Alerts left out because of the receiver's max_alerts.",
    )
    status: Literal["firing", "resolved"] = Field(description="firing if any alert fires.")
    receiver: str = Field(description="Name of the Alertmanager receiver.")
    group_labels: dict[str, str] = Field(alias="groupLabels")
    common_labels: dict[str, str] = Field(alias="commonLabels")
    common_annotations: dict[str, str] = Field(alias="commonAnnotations")
    external_url: str = Field(alias="externalURL", description="Alertmanager's own URL.")
    alerts: list[Alert] = Field(min_length=1, description="The alerts; never empty.")


def incident_id(fingerprint: str, starts_at: datetime) -> str:
    """Id of the incident of an alert: lowercase fingerprint and its UTC start, to the µs.

    Alertmanager sends ``startsAt`` with nanoseconds; microseconds are what Python keeps, and
    two firing episodes of one alert never start within the same microsecond.
    """
    utc = starts_at.astimezone(UTC)
    return f"{fingerprint.lower()}-{utc:%Y%m%dt%H%M%S}.{utc.microsecond:06d}z"


__all__ = ["FINGERPRINT_PATTERN", "Alert", "WebhookPayload", "incident_id"]
