"""The Alertmanager webhook receiver: authenticate, validate, record durably, submit.

Never imports torch: of :mod:`workflows` it uses :mod:`workflows.contract` only (template
name, parameters, deterministic run names, run-state reader).
"""

from webhook.app import Receiver, create_app, receiver_of
from webhook.dispatcher import Dispatcher, workflow_parameters
from webhook.errors import ConfigurationError, WebhookError
from webhook.models import Alert, WebhookPayload, incident_id
from webhook.outbox import Incident, Outbox
from webhook.server import ReceiverServer, serve
from webhook.submitters import ArgoSubmitter, LocalSubmitter, Submitter, build_submitter

__all__ = [
    "Alert",
    "ArgoSubmitter",
    "ConfigurationError",
    "Dispatcher",
    "Incident",
    "LocalSubmitter",
    "Outbox",
    "Receiver",
    "ReceiverServer",
    "Submitter",
    "WebhookError",
    "WebhookPayload",
    "build_submitter",
    "create_app",
    "incident_id",
    "receiver_of",
    "serve",
    "workflow_parameters",
]
