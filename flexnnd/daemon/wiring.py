"""Wiring: the daemon's parts handed to the gRPC servers.

The servicers see a narrow services.Backend, never the daemon: the models and events, the models
directory, and the few operations that change what is served. LoadModel resolves names inside the
models directory (or the zoo) and is remembered across restarts (catalog.py); a load or unload
updates the health service. Every server answers with one set of servicers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc

from flexnnd.daemon import services, status, transport
from flexnnd.daemon.budget import BudgetControl
from flexnnd.daemon.catalog import Catalog
from flexnnd.daemon.config import Config
from flexnnd.daemon.events import EventBus
from flexnnd.daemon.health import Health
from flexnnd.daemon.models import Model, Models
from flexnnd.errors import InvalidRequest

MAX_WATCHERS = 8  # WatchEvents streams at once: each holds one of the servers' threads


def backend(
    config: Callable[[], Config],
    models: Models,
    events: EventBus,
    catalog: Catalog,
    budget: BudgetControl,
    health: Health,
    started: float,
) -> services.Backend:
    """The servicers' view of the daemon; `config()` is the configuration in force, as reloaded."""

    def load_model(name: str, path: str) -> Model:
        """LoadModel: only files inside the models directory (or built-in zoo names); remembered across restarts."""
        if not name:
            raise InvalidRequest("a model name is required")
        model = catalog.load(models, name, path or name, required=True)
        catalog.remember(name, path or name)
        health.update()
        return model

    def unload_model(name: str) -> None:
        models.unload(name)
        catalog.remember(name, None)
        health.update()

    return services.Backend(
        models=models,
        events=events,
        models_dir=catalog.dirs.models,
        max_watchers=MAX_WATCHERS,
        ready=health.ready,
        max_message_bytes=lambda: config().max_message_bytes,
        load_model=load_model,
        unload_model=unload_model,
        set_budget=budget.set_operator_budget,
        status=lambda: status.status_message(budget, models, events, started),
    )


def start_servers(
    config: Config, socket_path: Path, backend: services.Backend, health: Health
) -> list[grpc.Server]:
    """The socket's server and, if configured, TCP's, started with the servicers over `backend`."""
    workers = 8 + backend.max_watchers + 4 * (1 + config.queue_depth)
    servicers = transport.Servicers(
        services.InferenceService(backend), services.ControlService(backend), health.servicer
    )
    return transport.start_servers(config, socket_path, servicers, workers)
