"""An error raised in a prepare child comes back as the same class, message and attributes."""

from __future__ import annotations

import inspect

import pytest

from flexnnd import errors, zoo
from flexnnd.daemon.prepare import in_child

# Every FlexnnError class, with the arguments of one instance; a class missing here fails the last test.
EXAMPLES = {
    "FlexnnError": ("plain",),
    "ModelImportError": ("cannot import",),
    "ModelFormatError": ("not protobuf",),
    "UnsupportedOp": ("Foo", "node_7", 13, "no such op"),
    "ShapeError": ("shapes disagree",),
    "PackageError": ("manifest missing",),
    "FeedError": ("input x: wrong shape",),
    "PlanError": ("plan fails verification",),
    "BudgetTooSmall": (1_000, 2_500, "resnet18", False),
    "StalePlanFile": ("format 3",),
    "LoadError": ("short read",),
    "ArenaError": (1 << 30, 1 << 20, "mmap refused"),
    "ServingError": ("cannot serve",),
    "ModelNotFound": ("a", ["b", "c"]),
    "ModelAlreadyLoaded": ("a", "/models/a.onnx"),
    "ModelNotReady": ("no plan",),
    "Overloaded": ("queue full",),
    "ConfigError": ("threads: is -1",),
    "AlreadyRunning": ("/run/flexnnd.lock", 4242),
    "InvalidRequest": ("bad bytes", 12, 8, "x"),
    "StorageError": ("disk full",),
    "MalformedGraph": ("a cycle",),
    "TensorTooLarge": ("weight w", (1 << 20, 1 << 20), 1 << 42, 1 << 32),
    "ExternalDataError": ("outside the folder",),
    "InstallError": ("a path in the way",),
    "DtypeRefused": ("input 0 is int64; Relu runs on float32",),
    "InputValueError": ("embed", "Gather", "index 9 is out of range [-5, 5)"),
    "UnsupportedOps": (
        [errors.UnsupportedOp("Foo", "n1", 13, "no such op"), errors.UnsupportedOp("Bar", "n2", 13)],
    ),
}
CLASSES = {
    **{
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, errors.FlexnnError)
    },
    "UnknownModel": zoo.UnknownModel,
}
EXAMPLES["UnknownModel"] = ("no_such_net",)


def _raise(name: str, args: tuple) -> None:
    raise CLASSES[name](*args)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_an_error_keeps_its_class_message_and_attributes_across_the_child(name):
    expected = CLASSES[name](*EXAMPLES[name])
    with pytest.raises(errors.FlexnnError) as raised:
        in_child(_raise, name, EXAMPLES[name])
    got = raised.value
    assert type(got) is type(expected)
    assert (str(got), got.args) == (str(expected), expected.args)
    assert _plain(vars(got)) == _plain(vars(expected))


def _plain(value):
    """Attributes comparable by value: an error inside (UnsupportedOps' refusals) as its class,
    message and attributes, since exceptions compare by identity."""
    if isinstance(value, BaseException):
        return type(value).__name__, str(value), _plain(vars(value))
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def test_an_os_error_in_the_child_comes_back_as_a_package_error_naming_it(tmp_path):
    with pytest.raises(errors.PackageError, match=r"FileNotFoundError: .*missing\.txt"):
        in_child(_read, str(tmp_path / "missing.txt"))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_every_error_class_has_an_example():
    assert set(CLASSES) == set(EXAMPLES)
