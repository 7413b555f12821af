"""Delivery of the signed task callbacks waiting in the webhook outbox."""

from __future__ import annotations

import dagster as dg

from moviegen_dagster.db import connect
from moviegen_dagster.fetch import Allowlist
from moviegen_dagster.settings import get_settings


@dg.sensor(minimum_interval_seconds=2, default_status=dg.DefaultSensorStatus.RUNNING)
def deliver_webhooks(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """POST due terminal events to their callback_url (Standard Webhooks signatures, retries)."""
    from moviegen_dagster import webhooks

    settings = get_settings()
    if settings.webhook_signing_secret is None:
        return dg.SkipReason("WEBHOOK_SIGNING_SECRET is not set; events wait in the outbox")
    sender = webhooks.Sender(
        settings.webhook_signing_secret.get_secret_value(),
        Allowlist.parse(settings.url_allowlist),
        timeout=settings.webhook_timeout_seconds,
    )
    with connect(settings.require_database_url()) as conn:
        conn.autocommit = True  # deliver_due manages its own short transactions
        results = webhooks.deliver_due(conn, sender, limit=50, max_seconds=30)
    delivered = sum(r.delivered for r in results)
    return dg.SkipReason(f"{delivered}/{len(results)} webhook attempt(s) delivered")
