"""The models the daemon may serve: names resolved inside the models directory (or the zoo), and the
models loaded over the API, remembered in the state directory so that a restart loads them again."""

from __future__ import annotations

import json
from pathlib import Path

from flexnnd import zoo
from flexnnd.daemon import prepare
from flexnnd.daemon.config import Dirs
from flexnnd.daemon.events import Event, EventBus
from flexnnd.daemon.prepare import in_child
from flexnnd.errors import InvalidRequest
from flexnnd.storage import write_atomically

LOADED_FILE = "models.json"  # models loaded with LoadModel: name -> path in the models directory


class Catalog:
    def __init__(self, dirs: Dirs, events: EventBus):
        self.dirs, self.events = dirs, events

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
        if spec in zoo.MODELS:
            path = zoo.cached_path(spec, self.dirs.cache / "zoo")
            return path if path.exists() else Path(in_child(prepare.zoo_model, spec, str(path.parent)))
        raise InvalidRequest(
            f"no model {spec!r} in {models_dir} (an .onnx file or a package folder), and it is not a built-in "
            f"model ({', '.join(zoo.MODELS)})"
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


def served_name(spec: str) -> str:
    """The served name of a configured model: a file's stem, or the zoo name itself."""
    return Path(spec).stem if "/" in spec or spec.endswith(".onnx") else spec
