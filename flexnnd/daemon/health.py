"""Health: whether the daemon can serve, as the gRPC health service, ServerReady and systemd's
watchdog see it.

Ready means at least one model is loaded and every model is ready to infer; the health service
then says SERVING for the whole server ("") and for inference.GRPCInferenceService, else
NOT_SERVING. The daemon updates it after every budget decision, load, unload and weights check.
The watchdog is pinged only while no inference has run for longer than twice its interval: a
stuck kernel or loader stops the pings, and systemd restarts the daemon.
"""

from __future__ import annotations

import logging

from grpc_health.v1 import health, health_pb2

from flexnnd.daemon.models import Models
from flexnnd.daemon.sdnotify import Notifier

log = logging.getLogger("flexnnd")

SERVICES = ("", "inference.GRPCInferenceService")  # the whole server, and OIP


class Health:
    """The health servicer every gRPC server answers with, kept in step with the models."""

    def __init__(self, models: Models):
        self.models = models
        self.servicer = health.HealthServicer()

    def ready(self) -> bool:
        models = self.models.all()
        return bool(models) and all(m.ready for m in models)

    def update(self) -> None:
        serving = (
            health_pb2.HealthCheckResponse.SERVING
            if self.ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in SERVICES:
            self.servicer.set(service, serving)


class Watchdog:
    """systemd's watchdog, pinged at most every `interval` seconds (None: not asked for)."""

    def __init__(self, notifier: Notifier, models: Models, interval: float | None):
        self.notifier, self.models, self.interval = notifier, models, interval
        self.last_ping = 0.0

    def workers_alive(self, limit_s: float) -> bool:
        """No inference has been running for longer than `limit_s` (a stuck kernel or loader)."""
        return all(m.stuck_seconds < limit_s for m in self.models.all())

    def tick(self, now: float) -> None:
        interval = self.interval
        if interval and now - self.last_ping >= interval:
            if self.workers_alive(limit_s=2 * interval):
                self.notifier.watchdog()
                self.last_ping = now
            else:
                log.error("an inference has run for over %.0f s: withholding the watchdog ping", 2 * interval)
