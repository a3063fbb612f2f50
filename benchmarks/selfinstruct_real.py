"""Benchmark: `llamaforge selfinstruct` on the bundled model served locally, with one SIGKILL.

    python benchmarks/selfinstruct_real.py [--num 200] [--kill-after 10] [--time-limit 1500]
        [--concurrency 8] [--threads 1] [--max-tokens 160] [--lang en] [--train-steps 2]
        [--output-dir runs/selfinstruct-real]

Runs the command with no --endpoint (so it starts `llamaforge serve` on smollm2-135m itself),
SIGKILLs it once ``--kill-after`` records are in its journal, checks that its server went
with it, runs the same command again, and lets it finish — or, past ``--time-limit``
seconds of wall time in all, stops it with SIGTERM (it writes its outputs and can be
resumed with the same command). Then it checks the data file (no duplicate instruction, every
record journaled before the kill still there, generated = kept + dropped) and, with
``--train-steps``, trains LoRA on it for that many steps with `llamaforge train`.
The last line printed is JSON: kept, generated, dropped by reason, requests, tokens,
seconds, records per minute.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def kept_in_journal(journal: Path) -> list[dict[str, str]]:
    kept = []
    if journal.exists():
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("type") == "kept":
                kept.append(event["record"])
    return kept


def server_ports(log: Path) -> list[int]:
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    return [int(p) for p in re.findall(r"listening on http://127\.0\.0\.1:(\d+)", text)]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--kill-after", type=int, default=10, help="0: no kill")
    parser.add_argument("--time-limit", type=float, default=1500.0, help="seconds in all")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--lang", default="en")
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/selfinstruct-real")
    args = parser.parse_args()

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data.json"
    journal, log = out / "data.journal.jsonl", out / "data.serve.log"
    command = [
        *(sys.executable, "-m", "llamaforge", "selfinstruct", "--output", str(data)),
        *("--num", str(args.num), "--lang", args.lang, "--concurrency", str(args.concurrency)),
        *("--threads", str(args.threads), "--max-tokens", str(args.max_tokens), "--overwrite"),
    ]
    start = time.monotonic()
    before_kill: list[dict[str, str]] = []
    killed_server_gone = None
    if args.kill_after:
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        while first.poll() is None and len(kept_in_journal(journal)) < args.kill_after:
            if time.monotonic() - start > args.time_limit:
                break
            time.sleep(1)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        before_kill = kept_in_journal(journal)
        print(f"SIGKILL after {time.monotonic() - start:.0f} s with {len(before_kill)} kept")
        time.sleep(10)  # the server gets SIGTERM when its parent dies, then drains
        killed_server_gone = not any(port_open(p) for p in server_ports(log))
        print(f"server of the killed run gone: {killed_server_gone}")
    resume = [c for c in command if c != "--overwrite"] if args.kill_after else command
    second = subprocess.Popen(resume, stdout=subprocess.PIPE, text=True)
    while second.poll() is None:
        if time.monotonic() - start > args.time_limit:
            second.send_signal(signal.SIGTERM)  # a clean stop: outputs written, resumable
            break
        time.sleep(1)
    summary_line = second.communicate()[0].strip()
    wall_s = time.monotonic() - start
    print(summary_line)

    records = json.loads(data.read_text(encoding="utf-8"))
    stats = json.loads((out / "data.stats.json").read_text())
    instructions = [r["instruction"] for r in records]
    checks = {
        "no_duplicate_instruction": len(set(instructions)) == len(instructions),
        "nothing_lost_from_before_the_kill": records[: len(before_kill)] == before_kill,
        "statistics_add_up": stats["generated"] == stats["kept"] + stats["dropped"]
        and stats["dropped"] == sum(stats["dropped_by_reason"].values()),
        "killed_run_left_no_server": killed_server_gone,
    }
    print("checks:", checks)
    for record in records[:5]:
        print(json.dumps(record, ensure_ascii=False)[:300])

    trained = None
    if args.train_steps and records:
        run_dir = out / f"train-{int(time.time())}"
        code = subprocess.call(
            [
                *(sys.executable, "-m", "llamaforge", "train", "model=smollm2-135m"),
                *("dataset=[data]", f"dataset_dir={out}", f"output_dir={run_dir}"),
                *(f"max_steps={args.train_steps}", "batch_size=4", "micro_batch_size=4"),
                *("logging_steps=1", "cutoff_len=256"),
            ]
        )
        log_lines = (run_dir / "trainer_log.jsonl").read_text().splitlines() if code == 0 else []
        trained = [json.loads(line)["loss"] for line in log_lines if '"loss"' in line]
        print(f"llamaforge train exit {code}, losses {trained}")

    figures = {
        "kept": stats["kept"],
        "generated": stats["generated"],
        "dropped": stats["dropped"],
        "dropped_by_reason": {k: v for k, v in stats["dropped_by_reason"].items() if v},
        "pending": stats["pending"],
        "requests": stats["requests"],
        "tokens": stats["tokens"],
        "stopped": stats["stopped"],
        "sessions": stats["sessions"],
        "kept_before_kill": len(before_kill),
        "wall_s": round(wall_s, 1),
        "kept_per_min": round(60 * stats["kept"] / wall_s, 2),
        "completion_tokens_per_s": round(stats["tokens"]["completion"] / wall_s, 2),
        "train_losses": trained,
        "checks": checks,
    }
    print(json.dumps(figures))
    return 0 if all(v is not False for v in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
