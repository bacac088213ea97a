"""The demo: serve a Block Transformer with `vllm serve` and talk to it.

    python examples/demo.py [MODEL_DIR]      (what `make demo` runs)

Starts `vllm serve MODEL_DIR` on 127.0.0.1 (a free port), waits until it is
healthy, sends a completion and a streamed chat request with the `openai`
client (examples/openai_client.py), prints the text and tokens/s, and stops
the server. MODEL_DIR defaults to the model shipped in models/.
"""
import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parent / "models" / "kjv-block-tiny"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=str(DEFAULT_MODEL))
    ap.add_argument("--prompt", default="And God said")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--log", default="out/demo_server.log")
    args = ap.parse_args()

    sys.path.insert(0, str(HERE))
    from openai_client import run

    from vllm_block.tools.serving import vllm_serve

    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    print(f"starting vllm serve {args.model} (log: {args.log}) ...", flush=True)
    start = time.perf_counter()
    with vllm_serve(args.model, "--dtype", "float32", "--max-model-len", "512",
                    log=Path(args.log)) as server:
        print(f"server healthy at {server.url} after {time.perf_counter() - start:.0f} s", flush=True)
        run(server.url + "/v1", args.prompt, args.max_tokens)
    print("server stopped")


if __name__ == "__main__":
    main()
