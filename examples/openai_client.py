"""Talk to a running `vllm serve` of a Block Transformer with the OpenAI client.

    python examples/openai_client.py [--base-url http://127.0.0.1:8000/v1]

Sends a completion and a streamed chat request; prints the text and tokens/s.
"""
import argparse
import time


def run(base_url: str, prompt: str, max_tokens: int) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused")
    model = client.models.list().data[0].id
    print(f"model: {model}")

    start = time.perf_counter()
    out = client.completions.create(model=model, prompt=prompt,
                                    max_tokens=max_tokens, temperature=0.8, seed=0)
    elapsed = time.perf_counter() - start
    print(f"completion: {prompt}{out.choices[0].text}")
    print(f"  {out.usage.completion_tokens} tokens in {elapsed:.2f} s "
          f"({out.usage.completion_tokens / elapsed:.1f} tokens/s)")

    start, pieces = time.perf_counter(), 0
    print("chat (streamed): ", end="", flush=True)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens, temperature=0.8, seed=0, stream=True,
        stream_options={"include_usage": True})
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
            pieces += 1
        usage = chunk.usage or usage
    elapsed = time.perf_counter() - start
    tokens = usage.completion_tokens if usage else pieces
    print(f"\n  {tokens} tokens in {elapsed:.2f} s ({tokens / elapsed:.1f} tokens/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--prompt", default="And God said")
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    run(args.base_url, args.prompt, args.max_tokens)


if __name__ == "__main__":
    main()
