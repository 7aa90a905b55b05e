"""The operator may edit the budget file or the config file by hand: watchdog tells the daemon."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

CHANGES = frozenset(
    {"created", "modified", "moved", "deleted", "closed"}
)  # watchdog event types that change a file


def watch_files(paths: Iterable[Path], changed: Callable[[Path], None]):
    """A started observer calling `changed(path)` (resolved) when one of `paths` changes."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    watched = {Path(p).resolve() for p in paths}

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            if event.event_type not in CHANGES:  # our own read opens the file: reacting to that loops forever
                return
            for p in (event.src_path, getattr(event, "dest_path", "")):
                if p and Path(p).resolve() in watched:
                    changed(Path(p).resolve())

    observer = Observer()
    for d in {p.parent for p in watched}:
        observer.schedule(Handler(), str(d), recursive=False)
    observer.daemon = True
    observer.start()
    return observer
