"""The reference HTTP endpoint for ``bench/serving.py``: bare Starlette + LiteRT on the same model.

What a hand-written endpoint does and no more: decode the JSON, put the row's numbers in the two
input tensors (ids clamped to 0/1 so any model's embeddings take them; no validation, no table look-ups, no lag state), invoke, answer JSON. Served by the
same uvicorn with the same parser and loop as the agent (:func:`edge.serving.http.fast_stack`)::

    python -m bench.bare_endpoint --model path/to/model.tflite     # prints its URL, serves until SIGTERM
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import uvicorn
    from ai_edge_litert.interpreter import Interpreter
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from edge.serving.http import fast_stack

    p = argparse.ArgumentParser(prog="bench.bare_endpoint")
    p.add_argument("--model", required=True)
    args = p.parse_args(argv)
    interp = Interpreter(model_path=args.model, num_threads=1)
    interp.allocate_tensors()
    ins = {d["name"]: d for d in interp.get_input_details()}
    cat_d = next(d for k, d in ins.items() if "cat" in k)
    num_d = next(d for k, d in ins.items() if "num" in k)
    out_idx = interp.get_output_details()[0]["index"]
    cat = np.zeros((1, int(cat_d["shape"][1])), cat_d["dtype"])
    num = np.zeros((1, int(num_d["shape"][1])), num_d["dtype"])

    async def predict(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        row = body["instances"][0]
        # ids into the embedding tables without a look-up: 0 (unknown) or 1 (the first known), valid for any model
        cat[0, 0], cat[0, 1] = min(row["store_nbr"], 1), min(row["item_nbr"], 1)
        num[0, 0] = float(row["onpromotion"])
        interp.set_tensor(cat_d["index"], cat)
        interp.set_tensor(num_d["index"], num)
        interp.invoke()
        y = float(interp.get_tensor(out_idx).reshape(-1)[0])
        return JSONResponse({"predictions": [round(float(np.expm1(y)), 4)]})

    app = Starlette(routes=[Route("/v1/predict", predict, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    http, loop = fast_stack()
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, http=http, loop=loop, log_config=None, access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
