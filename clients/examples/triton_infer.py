"""A stock Open Inference Protocol v2 client (NVIDIA's tritonclient) talking to flexnnd.

    pip install 'tritonclient[grpc]'
    python clients/examples/triton_infer.py --url unix:///run/flexnn/flexnnd.sock --model mobilenet_v2

Nothing here knows about flexnn: any OIP v2 / KServe v2 gRPC client works the same way. Run it in
its own process: tritonclient's generated `inference` messages and flexnnd's cannot share one.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="unix:///path/to/flexnnd.sock or host:port")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--input", default=None, help="a .npy input (default: a seeded random uint8 frame)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts and tests)")
    args = parser.parse_args(argv)

    client = grpcclient.InferenceServerClient(url=args.url)
    live, ready = client.is_server_live(), client.is_server_ready()
    meta = client.get_model_metadata(args.model)
    spec = meta.inputs[0]
    shape = [int(d) for d in spec.shape]
    if args.input:
        x = np.load(args.input, allow_pickle=False)
    else:
        x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    datatype = "UINT8" if x.dtype == np.uint8 else "FP32"
    tensor = grpcclient.InferInput(spec.name, shape, datatype)
    tensor.set_data_from_numpy(x if datatype == "UINT8" else x.astype(np.float32))
    result = client.infer(args.model, [tensor])
    out_name = meta.outputs[0].name
    y = result.as_numpy(out_name)
    top = [int(i) for i in np.argsort(y.reshape(-1))[::-1][:5]]
    if args.json:
        print(
            json.dumps(
                {
                    "live": live,
                    "ready": ready,
                    "input": spec.name,
                    "output": out_name,
                    "shape": list(y.shape),
                    "top5": top,
                    "values": y.reshape(-1).tolist(),
                }
            )
        )
    else:
        print(f"live {live}, ready {ready}; {args.model}: {spec.name} {shape} -> {out_name} {list(y.shape)}")
        print("top-5:", top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
