"""Benchmark: aggregate decode throughput of `llamaforge serve`, 1 client vs 8 concurrent.

    python benchmarks/serve_throughput.py [--model smollm2-135m] [--max-tokens 64]
        [--single-requests 3] [--threads N]

Starts the server in a fresh process on a free loopback port, waits for /health, warms up,
then measures (a) one client sending ``--single-requests`` streaming chat requests one after
another and (b) 8 clients each sending one streaming request at the same time. Tokens are
the server's ``usage.completion_tokens``; time is wall clock over each phase. The last line
printed is JSON with ``single_tokens_per_s``, ``concurrent8_tokens_per_s`` and ``speedup``.
Exits 1 if the speedup is below 4.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx

SERVER = """
import sys
from llamaforge.config import load_run_config
from llamaforge.serving.server import run_serve
cfg = load_run_config(None, (), model=sys.argv[1])
threads = int(sys.argv[3]) or None
sys.exit(run_serve(cfg, host="127.0.0.1", port=int(sys.argv[2]), api_key=None,
                   max_concurrent=16, adapters=[], threads=threads))
"""

# Open-ended prompts, so that answers tend to use the whole token budget.
PROMPTS = [
    "Write a detailed essay about the history of the printing press.",
    "Explain step by step how a steam engine works.",
    "Describe the water cycle in detail for a school report.",
    "Write a long story about a lighthouse keeper and a storm.",
    "Explain how the internet works, from cables to web pages.",
    "Describe the life cycle of a star in detail.",
    "Write a detailed guide to growing tomatoes at home.",
    "Explain the causes and effects of the industrial revolution.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> int:
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=payload) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    tokens = usage["completion_tokens"]
    return tokens


async def measure(url: str, model: str, max_tokens: int, single_requests: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        await one_request(client, model, "Hi", 4)  # warm-up
        start = time.perf_counter()
        single_tokens = 0
        for prompt in PROMPTS[:single_requests]:
            single_tokens += await one_request(client, model, prompt, max_tokens)
        single_s = time.perf_counter() - start
        start = time.perf_counter()
        counts = await asyncio.gather(*(one_request(client, model, p, max_tokens) for p in PROMPTS))
        concurrent_s = time.perf_counter() - start
    single = single_tokens / single_s
    concurrent = sum(counts) / concurrent_s
    return {
        "single_tokens_per_s": round(single, 2),
        "concurrent8_tokens_per_s": round(concurrent, 2),
        "speedup": round(concurrent / single, 2),
        "single_tokens": single_tokens,
        "concurrent8_tokens": sum(counts),
        "max_tokens": max_tokens,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--single-requests", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, args.model, str(port), str(args.threads)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 600
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become ready in 600 s")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        result = asyncio.run(measure(url, args.model, args.max_tokens, args.single_requests))
    finally:
        server.terminate()
        server.wait(60)
    result["threads"] = args.threads or "default"
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["speedup"] >= 4 else 1


if __name__ == "__main__":
    sys.exit(main())
