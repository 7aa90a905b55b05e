"""The op families' stand-in models (benchmarks/families.py) equal ONNX Runtime, all-resident and
at the smallest plan: a transformer encoder block, an EfficientNet block, a YOLO-style head, a
CNN+BiLSTM recognizer, an FPN segmenter and a QDQ int8 conv net."""

from __future__ import annotations

import pytest

from benchmarks.families import FAMILIES
from tests.conftest import assert_model_matches_ort


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_model_matches_onnxruntime(name, tmp_path):
    model, feeds = FAMILIES[name]()
    full, smallest = assert_model_matches_ort(model, feeds, tmp_path)
    assert smallest <= full
