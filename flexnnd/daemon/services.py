"""The gRPC servicers: Open Inference Protocol v2, flexnn.control.v1, and their error mapping.

Servicers are thin: they translate messages and map flexnn's exceptions to gRPC status codes.
The work happens in the daemon's Models and its budget control.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from flexnn_api.proto import inference_pb2, inference_pb2_grpc
from flexnn_api.proto.flexnn.control.v1 import control_pb2, control_pb2_grpc
from flexnn_api.sizes import parse_size

from flexnnd import __version__
from flexnnd.daemon import oip, status
from flexnnd.daemon.events import EventBus
from flexnnd.daemon.models import Model, Models, ModelState
from flexnnd.daemon.policy import Decision
from flexnnd.errors import (
    BudgetTooSmall,
    FeedError,
    FlexnnError,
    InvalidRequest,
    LoadError,
    ModelAlreadyLoaded,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PackageError,
)
from flexnnd.graph.package import MANIFEST

log = logging.getLogger("flexnnd.services")

# Most specific first: the first matching class decides the status.
STATUS_OF = (
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (ModelAlreadyLoaded, grpc.StatusCode.ALREADY_EXISTS),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelNotReady, grpc.StatusCode.UNAVAILABLE),
    (BudgetTooSmall, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (FeedError, grpc.StatusCode.INVALID_ARGUMENT),
    (LoadError, grpc.StatusCode.UNAVAILABLE),
    (PackageError, grpc.StatusCode.FAILED_PRECONDITION),
    (FlexnnError, grpc.StatusCode.FAILED_PRECONDITION),
)


# Status details travel in a header, non-ASCII bytes percent-encoded (x3): clients drop a stream whose
# headers exceed 8 KiB (soft) to 16 KiB, and messages echo names from the request, which may be that long.
MAX_DETAILS_BYTES = 1536
# Largest budget SetBudget accepts: sums of budgets and the uint64 response fields stay in range.
MAX_BUDGET_BYTES = 1 << 60
# The Triton extensions answered here, as ServerMetadata lists them.
EXTENSIONS = ("model_repository", "model_configuration", "statistics")
# RepositoryModelUnload parameters that change nothing here (there are no ensembles to unload with a model).
INERT_UNLOAD_PARAMETERS = frozenset({"unload_dependents"})
# Longest model path LoadModel accepts (Linux PATH_MAX); longer ones cannot name a file anyway.
MAX_PATH_CHARS = 4096


def abort(context: grpc.ServicerContext, error: FlexnnError):
    """End the RPC with the status that fits `error` and its message (which carries the numbers)."""
    code = next(code for cls, code in STATUS_OF if isinstance(error, cls))
    context.abort(code, _details(str(error)))


def _details(message: str) -> str:
    raw = message.encode()
    if len(raw) <= MAX_DETAILS_BYTES:
        return message
    kept = raw[:MAX_DETAILS_BYTES].decode(errors="ignore")  # never half a character
    return f"{kept}... ({len(raw) - MAX_DETAILS_BYTES:,} more bytes)"


def _check_budget_text(text: str) -> None:
    """Refuse absurd budgets (sums and the uint64 response fields must stay in range) before the daemon stores them."""
    text = text.strip()
    if text.lower() == "auto":
        return
    try:
        budget = parse_size(text)  # bounded by sizes.MAX_SIZE: never an overflow
    except ValueError:
        return  # the daemon's own parse reports it, with the accepted forms
    if budget > MAX_BUDGET_BYTES:
        raise InvalidRequest(
            f"budget {text[:64]!r} is {budget:,} bytes, above the largest accepted {MAX_BUDGET_BYTES:,}",
            expected=MAX_BUDGET_BYTES,
            got=budget,
        )


def _check_model_request(name: str, path: str) -> None:
    """Names and paths that no file can have: refused as arguments rather than failing in the OS."""
    for field, text in (("name", name), ("path", path)):
        if "\0" in text:
            raise InvalidRequest(f"model {field} {text[:64]!r} holds a NUL byte")
        if len(text) > MAX_PATH_CHARS or any(len(part.encode()) > 255 for part in text.split("/")):
            raise InvalidRequest(
                f"model {field} {text[:64]!r}... is {len(text):,} characters or has a component above 255 bytes",
                expected=MAX_PATH_CHARS,
                got=len(text),
            )


@dataclass(frozen=True)
class Backend:
    """What the servicers use of the daemon, and nothing else: its models and events, the models
    directory, and the few operations that change what is served."""

    models: Models
    events: EventBus
    models_dir: Path
    max_watchers: int
    ready: Callable[[], bool]  # every model ready to infer
    max_message_bytes: Callable[[], int]  # the configuration's, as reloaded
    load_model: Callable[[str, str], Model]  # LoadModel: a name, and a path in the models directory
    unload_model: Callable[[str], None]
    set_budget: Callable[[str], Decision]  # the operator's budget: a size or "auto"
    status: Callable[[], control_pb2.Status]  # GetStatus's message


@contextlib.contextmanager
def mapped_errors(context: grpc.ServicerContext):
    try:
        yield
    except FlexnnError as e:
        abort(context, e)


class InferenceService(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Open Inference Protocol v2, and the Triton extensions stock clients call: model configuration,
    statistics, and the repository (the models directory), whose load and unload are the control
    service's LoadModel and UnloadModel."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def ServerLive(self, request, context):
        return inference_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return inference_pb2.ServerReadyResponse(ready=self.backend.ready())

    def ModelReady(self, request, context):
        with mapped_errors(context):
            model = self.backend.models.get(request.name)
            self._check_version(request.version, model.name)
            return inference_pb2.ModelReadyResponse(ready=model.ready)

    def ServerMetadata(self, request, context):
        return oip.server_metadata(__version__, EXTENSIONS)

    def ModelMetadata(self, request, context):
        with mapped_errors(context):
            model = self.backend.models.get(request.name)
            self._check_version(request.version, model.name)
            return oip.model_metadata(model.name, ["1"], model.inputs, model.outputs)

    def ModelInfer(self, request, context):
        start = time.perf_counter()
        with mapped_errors(context):
            models = self.backend.models
            model = models.get(request.model_name)
            self._check_version(request.model_version, model.name)
            try:
                feeds = oip.decode_infer_request(request, model.inputs, self.backend.max_message_bytes())
                names = oip.requested_outputs(request, model.outputs)
                decoded = time.perf_counter()
                outputs = models.infer(model.name, feeds)
                ran = time.perf_counter()
                response = oip.encode_infer_response(model.name, "1", request.id, outputs, names)
            except FlexnnError:
                model.stats.failed(time.perf_counter() - start)
                raise
            end = time.perf_counter()
            model.stats.answered(input_s=decoded - start, output_s=end - ran, total_s=end - start)
            return response

    def ModelConfig(self, request, context):
        with mapped_errors(context):
            model = self.backend.models.get(request.name)
            self._check_version(request.version, model.name)
            return oip.model_config(model.name, model.inputs, model.outputs)

    def ModelStatistics(self, request, context):
        """Every loaded model's statistics, or one model's (NOT_FOUND if it is not loaded)."""
        with mapped_errors(context):
            models = self.backend.models
            chosen = [models.get(request.name)] if request.name else models.all()
            for model in chosen:
                self._check_version(request.version, model.name)
            return inference_pb2.ModelStatisticsResponse(
                model_stats=[oip.model_statistics(m.name, "1", m.stats, m.held_bytes) for m in chosen]
            )

    def RepositoryIndex(self, request, context):
        """The loaded models with their state, and the models directory's others as UNAVAILABLE."""
        with mapped_errors(context):
            _check_repository(request.repository_name)
            loaded = {m.name: m for m in self.backend.models.all()}
            names = sorted(set(loaded) | set(repository_models(self.backend.models_dir)))
            entries = [
                oip.index_entry(n, loaded[n].state, loaded[n].reason)
                if n in loaded
                else oip.index_entry(n, None)
                for n in names
            ]
            return inference_pb2.RepositoryIndexResponse(
                models=[e for e in entries if e.state == "READY" or not request.ready]
            )

    def RepositoryModelLoad(self, request, context):
        """LoadModel by name; a model already loaded and not failed is left as it is (loading is idempotent)."""
        with mapped_errors(context):
            _check_repository(request.repository_name)
            _refuse_parameters("RepositoryModelLoad", request.parameters, frozenset())
            name = request.model_name
            _check_model_request(name, "")
            models = self.backend.models
            if name in models.names() and models.get(name).state is not ModelState.FAILED:
                log.info(
                    "RepositoryModelLoad %s: already loaded (%s), left as it is", name, models.get(name).state
                )
            else:
                self.backend.load_model(name, "")  # the name alone: NAME, NAME.onnx or a built-in model
            return inference_pb2.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        with mapped_errors(context):
            _check_repository(request.repository_name)
            _refuse_parameters("RepositoryModelUnload", request.parameters, INERT_UNLOAD_PARAMETERS)
            self.backend.unload_model(request.model_name)
            return inference_pb2.RepositoryModelUnloadResponse()

    @staticmethod
    def _check_version(version: str, name: str) -> None:
        if version not in ("", "1"):
            raise ModelNotFound(f"{name}:{version}", [f"{name}:1"])


def _check_repository(name: str) -> None:
    if name:
        raise InvalidRequest(
            f"repository {name[:64]!r}: flexnnd has one repository, its models directory; leave the name empty",
            expected="",
            got=name[:64],
        )


def _refuse_parameters(rpc: str, parameters, inert: frozenset[str]) -> None:
    """Parameters that would change what is loaded (a config override, uploaded files) are refused, not ignored."""
    unknown = sorted(set(parameters) - inert)
    if unknown:
        raise InvalidRequest(
            f"{rpc}: parameters {', '.join(repr(p[:64]) for p in unknown[:8])} are not supported; flexnnd loads a "
            "model as it is in the models directory (no configuration override, no uploaded files)",
            expected=sorted(inert),
            got=unknown[:8],
        )


def repository_models(models_dir: Path) -> list[str]:
    """Model names in the models directory: each .onnx file's stem and each package folder's name."""
    try:
        entries = list(models_dir.iterdir())
    except FileNotFoundError:
        return []
    return [
        p.stem if p.suffix == ".onnx" else p.name
        for p in entries
        if (p.suffix == ".onnx" and p.is_file()) or (p / MANIFEST).is_file()
    ]


class ControlService(control_pb2_grpc.ControlServicer):
    def __init__(self, backend: Backend):
        self.backend = backend

    def SetBudget(self, request, context):
        with mapped_errors(context):
            _check_budget_text(request.budget)
            decision = self.backend.set_budget(request.budget)
            status = self.backend.status()  # the reply is what status shows: one builder for both
            return control_pb2.SetBudgetResponse(
                effective_budget_bytes=decision.budget or 0,
                budget_source=decision.source,
                operator_budget=status.operator_budget,
                configured_budget=status.configured_budget,
                reason=decision.reason,
            )

    def GetStatus(self, request, context):
        return control_pb2.GetStatusResponse(status=self.backend.status())

    def ListModels(self, request, context):
        return control_pb2.ListModelsResponse(
            models=[status.model_status(m.snapshot()) for m in self.backend.models.all()]
        )

    def LoadModel(self, request, context):
        with mapped_errors(context):
            _check_model_request(request.name, request.path)
            model = self.backend.load_model(request.name, request.path)
            return control_pb2.LoadModelResponse(model=status.model_status(model.snapshot()))

    def UnloadModel(self, request, context):
        with mapped_errors(context):
            self.backend.unload_model(request.name)
            return control_pb2.UnloadModelResponse()

    def ListPlans(self, request, context):
        with mapped_errors(context):
            model = self.backend.models.get(request.model)
            active = (
                model.session.plan.arena_bytes if model.session is not None and model.session.loaded else -1
            )
            return control_pb2.ListPlansResponse(
                plans=[status.plan_info(model, r, r.entry.arena_bytes == active) for r in model.rungs]
            )

    def WatchEvents(self, request, context):
        if self.backend.events.watchers >= self.backend.max_watchers:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.backend.events.watchers} watchers already (limit {self.backend.max_watchers})",
            )
        with self.backend.events.subscribe() as sub:
            while context.is_active() and not sub.closed:
                event = sub.get(timeout=0.5)
                if event is not None:
                    yield status.event_message(event)
