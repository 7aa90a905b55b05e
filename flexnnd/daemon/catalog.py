"""The models the daemon may serve: names resolved inside the models directory (or the zoo), and the
models loaded over the API, remembered in the state directory so that a restart loads them again."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from flexnnd import zoo
from flexnnd.daemon import prepare
from flexnnd.daemon.config import Config, Dirs
from flexnnd.daemon.events import Event, EventBus
from flexnnd.daemon.models import Model, Models, ModelState
from flexnnd.daemon.prepare import in_child
from flexnnd.errors import FlexnnError, InvalidRequest, ShapeError
from flexnnd.storage import write_atomically

LOADED_FILE = "models.json"  # models loaded with LoadModel: name -> path in the models directory


class Catalog:
    def __init__(self, dirs: Dirs, events: EventBus, config: Callable[[], Config] = Config):
        """`config()` is the configuration in force (as reloaded): its input_shapes apply at each load."""
        self.dirs, self.events, self.config = dirs, events, config
        self.loaded_shapes: dict[str, dict[str, tuple[int, ...]] | None] = {}  # what each load imported with

    def load(self, models: Models, name: str, spec: str, required: bool = False) -> Model:
        """Load `spec` as `name` with the input shapes the config gives for `name`; a model whose
        shapes stay unknown gets the importer's ShapeError, which then names the config key."""
        shapes = self.config().shapes_for(name)
        try:
            model = models.load(name, self.resolve(spec), required=required, input_shapes=shapes)
        except ShapeError as e:
            hint = "" if shapes else f" In the daemon's config: [input_shapes.{name}] INPUT = [D, D, ...]."
            raise ShapeError(f"model {name!r}: {e}{hint}") from None
        self.loaded_shapes[name] = shapes
        return model

    def resolve(self, spec: str) -> Path:
        """A model named in the configuration: a file or package inside the models directory, or a zoo name."""
        models_dir = self.dirs.models.resolve()
        candidate = (models_dir / spec).resolve()
        if not candidate.is_relative_to(models_dir):
            raise InvalidRequest(
                f"model {spec!r} resolves to {candidate}, outside the models directory {models_dir}"
            )
        if candidate.exists():
            return candidate
        named = candidate.with_name(candidate.name + ".onnx")  # `load sq` means sq.onnx as well as sq/
        if named.exists() and named.is_relative_to(models_dir):
            return named
        if spec in zoo.ALL_MODELS:
            path = zoo.cached_path(spec, self.dirs.cache / "zoo")
            return path if path.exists() else Path(in_child(prepare.zoo_model, spec, str(path.parent)))
        raise InvalidRequest(
            f"no model {spec!r} in {models_dir} (an .onnx file or a package folder), and it is not a built-in "
            f"model ({', '.join(zoo.ALL_MODELS)})"
        )

    @property
    def loaded_file(self) -> Path:
        return self.dirs.state / LOADED_FILE

    def remembered(self) -> dict[str, str]:
        try:
            loaded = json.loads(self.loaded_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            self.events.publish(Event("error", f"ignoring {self.loaded_file}: {e}"))
            return {}
        return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}

    def remember(self, name: str, spec: str | None) -> None:
        """Models loaded over the API, kept in the state directory so a restart brings them back."""
        loaded = self.remembered()
        if spec is None:
            loaded.pop(name, None)
        else:
            loaded[name] = spec
        write_atomically(self.loaded_file, json.dumps(loaded, indent=1) + "\n", "state file")

    def load_at_start(self, models: Models, specs: Iterable[str], say: Callable[[str], None]) -> None:
        """The configured models (a failure stops the start), then those loaded over the API before
        the restart (a failure is an error event); `say` tells systemd which one loads."""
        for spec in specs:
            say(f"loading {served_name(spec)}")
            self.load(models, served_name(spec), spec)
        for name, spec in self.remembered().items():
            if name not in models.names():
                say(f"loading {name}")
                try:
                    self.load(models, name, spec)
                except FlexnnError as e:
                    self.events.publish(
                        Event("error", f"cannot load {name} again after the restart: {e}", model=name)
                    )

    def load_wanted(self, models: Models, specs: Iterable[str]) -> None:
        """A reload: unload the models neither configured nor remembered, load the missing and the
        failed, and load again those whose input_shapes changed."""
        wanted = {served_name(s): s for s in specs}
        wanted.update({n: s for n, s in self.remembered().items() if n not in wanted})
        reshaped = {
            n
            for n in models.names()
            if n in wanted and self.loaded_shapes.get(n) != self.config().shapes_for(n)
        }
        for name in (set(models.names()) - set(wanted)) | reshaped:
            models.unload(name)
            self.loaded_shapes.pop(name, None)
        for name, spec in wanted.items():
            if name not in models.names() or models.get(name).state is ModelState.FAILED:
                try:
                    self.load(models, name, spec)
                except FlexnnError as e:
                    self.events.publish(Event("error", f"reload: cannot load {name}: {e}", model=name))


def served_name(spec: str) -> str:
    """The served name of a configured model: a file's stem, or the zoo name itself."""
    return Path(spec).stem if "/" in spec or spec.endswith(".onnx") else spec
