"""`python -m flexnnd.zoo NAME OUT.onnx`: the README's way to get a first model file."""

from __future__ import annotations

import onnx
import pytest

from flexnnd import zoo
from flexnnd.zoo.__main__ import main


def test_writes_the_named_model_with_its_parameter_count(tmp_path, capsys):
    out = tmp_path / "sq.onnx"
    assert main(["squeezenet1_1", str(out)]) == 0
    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert zoo.parameter_count(model) == 1_235_496
    assert "1,235,496 parameters" in capsys.readouterr().out


def test_an_unknown_name_or_an_unwritable_path_fails_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["alexnet", str(tmp_path / "a.onnx")])
    assert exit_.value.code == 2 and "invalid choice: 'alexnet'" in capsys.readouterr().err
    assert main(["squeezenet1_1", str(tmp_path / "missing" / "a.onnx")]) == 1
    assert "No such file or directory" in capsys.readouterr().err


def test_writes_a_transformer_with_its_token_inputs(tmp_path, capsys):
    out = tmp_path / "bert.onnx"
    assert main(["bert_mini", str(out)]) == 0
    assert zoo.parameter_count(onnx.load(out)) == 172_480
    assert "input_ids [1,16], attention_mask [1,16], token_type_ids [1,16]" in capsys.readouterr().out
