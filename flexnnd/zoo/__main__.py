"""`python -m flexnnd.zoo NAME OUT.onnx`: write a built-in model as an ONNX file, to try flexnn on."""

from __future__ import annotations

import argparse
import sys

from flexnnd.errors import FlexnnError
from flexnnd.zoo import ALL_MODELS, build, parameter_count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flexnnd.zoo",
        description="Write a built-in model (torchvision's or transformers' architecture, seeded random weights) as ONNX.",
    )
    parser.add_argument("name", choices=ALL_MODELS, help="the model")
    parser.add_argument("out", help="the .onnx file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    import onnx

    try:
        model = build(args.name, args.seed)
        onnx.save(model, args.out)
    except (FlexnnError, OSError) as e:
        print(f"python -m flexnnd.zoo: {e}", file=sys.stderr)
        return 1
    inputs = ", ".join(
        f"{i.name} [{','.join(d.dim_param or str(d.dim_value) for d in i.type.tensor_type.shape.dim)}]"
        for i in model.graph.input
    )
    print(f"wrote {args.name} ({parameter_count(model):,} parameters; input {inputs}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
