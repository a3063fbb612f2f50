"""``llamaforge selfinstruct``: seed tasks → new instructions → instances → filters → Alpaca JSON.

Contract: :func:`run_selfinstruct` runs the self-instruct loop until ``num`` records are
kept (or the request budget is spent), against ``endpoint`` or, with none, a
``llamaforge serve`` it starts on ``model`` (the bundled SmolLM2 by default) and stops.

1. brainstorm: a request shows ``examples`` instructions (seeds, plus ``machine_examples``
   kept ones once there are any) and asks for ``new_per_request`` new ones; each one parsed
   is checked by the text filters and against the pool (seeds, kept and pending
   instructions: duplicates and ROUGE-L above ``threshold``) and dropped with its reason,
   or queued;
2. classify: is the queued instruction a classification task?
3. instance: output-first (class label, then input) for classification tasks, input-first
   otherwise; an answer without an instance, an empty output, input == output or an output
   in another language is dropped; otherwise the record is kept.

Every outcome is journaled before the next step (:mod:`llamaforge.selfinstruct.journal`):
a killed run restarted with the same command continues where it stopped, re-sending only
the requests that were in flight. Sampling is seeded per request from ``seed`` and the
request's identity, and a resumed run re-sends a lost request with the same seed. The
outputs (:mod:`llamaforge.selfinstruct.outputs`) are written at the end, also when the run
stops early: request budget spent, SIGTERM or Ctrl-C (the requests in flight are dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tqdm.auto import tqdm

from llamaforge.errors import ConfigError
from llamaforge.selfinstruct.client import BudgetSpent, ChatClient, RequestFailed, chat_url
from llamaforge.selfinstruct.filters import Limits, Pool, instance_problem, instruction_problem
from llamaforge.selfinstruct.journal import Journal, Progress, journal_path, read_journal
from llamaforge.selfinstruct.local_server import local_server
from llamaforge.selfinstruct.options import DEFAULT_LOCAL_MODEL, SelfInstructOptions
from llamaforge.selfinstruct.outputs import run_statistics, write_outputs
from llamaforge.selfinstruct.prompts import (
    Prompts,
    load_prompts,
    parse_instance,
    parse_instructions,
    parse_is_classification,
)
from llamaforge.selfinstruct.seeds import SeedTask, read_seed_tasks, shipped_seed_path

logger = logging.getLogger(__name__)

CLASSIFY_TOKENS = 8


class _Run:
    """One session's state: the replayed progress plus what is in flight."""

    def __init__(
        self,
        options: SelfInstructOptions,
        prompts: Prompts,
        seeds: list[SeedTask],
        progress: Progress,
        journal: Journal,
        client: ChatClient,
        started: float,
    ) -> None:
        self.options, self.prompts, self.seeds = options, prompts, seeds
        self.progress, self.journal, self.client = progress, journal, client
        self.limits = Limits(options.min_words, options.max_words)
        self.pool = Pool(options.threshold)
        for text in [s.instruction for s in seeds] + [r["instruction"] for r in progress.kept]:
            self.pool.add(text)
        for text in progress.queued.values():
            self.pool.add(text)
        self.waiting = deque(progress.queued.items())  # queued, not being completed now
        self.completing = 0
        self.next_brainstorm = 0
        self.budget_spent = False
        self.terminated = False  # SIGTERM
        self.started = started
        self.changed = asyncio.Event()
        self.bar = tqdm(
            total=options.num,
            initial=min(len(progress.kept), options.num),
            desc="selfinstruct",
            unit="record",
            file=sys.stderr,
        )

    @property
    def kept(self) -> int:
        return len(self.progress.kept)

    def finished(self) -> bool:
        return self.kept >= self.options.num or self.budget_spent

    def record(self, event: dict[str, Any]) -> None:
        """Journal ``event`` (on disk before anything else happens), then apply it."""
        event["requests"] = self.client.stats.to_dict()
        event["elapsed_s"] = round(time.monotonic() - self.started, 3)
        self.journal.append(event)
        self.progress.apply(event)
        dropped = sum(self.progress.dropped.values())
        self.bar.set_postfix(
            generated=self.progress.generated, dropped=dropped, requests=self.client.stats.sent
        )
        self.changed.set()

    def take_brainstorm_id(self) -> int:
        while self.next_brainstorm in self.progress.brainstorms:
            self.next_brainstorm += 1
        self.next_brainstorm += 1
        return self.next_brainstorm - 1

    def rng(self, *identity: object) -> random.Random:
        return random.Random(":".join(map(str, (self.options.seed, *identity))))


async def _brainstorm(run: _Run, ident: int) -> None:
    options, rng = run.options, run.rng("brainstorm", ident)
    machine = [r["instruction"] for r in run.progress.kept]
    from_machine = min(options.machine_examples, len(machine))
    from_seeds = min(options.examples - from_machine, len(run.seeds))
    shown = rng.sample([s.instruction for s in run.seeds], from_seeds)
    shown += rng.sample(machine, from_machine)
    rng.shuffle(shown)
    event: dict[str, Any] = {"type": "brainstorm", "id": ident}
    try:
        reply = await run.client.chat(
            run.prompts.brainstorm(shown, options.new_per_request),
            max_tokens=options.brainstorm_tokens,
            temperature=options.temperature,
            seed=rng.randrange(2**31),
        )
    except BudgetSpent:
        run.budget_spent = True  # not journaled: a later session sends this one again
        return
    except RequestFailed as e:
        logger.debug("brainstorm %d skipped: %s", ident, e)
        run.record({**event, "failed": True})
        return
    candidates = parse_instructions(reply.text, options.new_per_request)
    dropped: dict[str, int] = {}
    queued = []
    for j, candidate in enumerate(candidates):
        reason = instruction_problem(candidate, options.lang, run.limits)
        found = run.pool.problem(candidate) if reason is None else None
        reason = found[0] if found is not None else reason
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        run.pool.add(candidate)
        queued.append({"key": f"{ident}.{j}", "instruction": candidate.strip()})
    run.record({**event, "parsed": len(candidates), "dropped": dropped, "queued": queued})
    run.waiting.extend((item["key"], item["instruction"]) for item in queued)


async def _complete(run: _Run, key: str, instruction: str) -> None:
    """Classify one queued instruction, generate its instance, keep or drop it."""
    options, rng = run.options, run.rng("instance", key)
    reason: str | None = None
    instance: tuple[str, str] | None = None
    try:
        answer = await run.client.chat(
            run.prompts.classify(instruction), max_tokens=CLASSIFY_TOKENS, temperature=0.0, seed=0
        )
        output_first = parse_is_classification(answer.text)
        if output_first:
            examples = [s for s in run.seeds if s.is_classification] or run.seeds
            prompt = run.prompts.instance_output_first(instruction, rng.choice(examples))
        else:
            prompt = run.prompts.instance_input_first(instruction)
        reply = await run.client.chat(
            prompt,
            max_tokens=options.instance_tokens,
            temperature=options.temperature,
            seed=rng.randrange(2**31),
        )
    except BudgetSpent:
        run.budget_spent = True
        run.waiting.appendleft((key, instruction))  # still queued in the journal
        return
    except RequestFailed as e:
        logger.debug("instance of %s skipped: %s", key, e)
        reason = "request_failed"
    else:
        instance = parse_instance(reply.text, output_first)
        reason = "no_instance" if instance is None else instance_problem(*instance, options.lang)
    if reason is not None or instance is None:
        run.pool.withdraw(instruction)
        run.record({"type": "dropped", "key": key, "reason": reason or "no_instance"})
        return
    record = {"instruction": instruction, "input": instance[0], "output": instance[1]}
    run.record({"type": "kept", "key": key, "record": record, "classification": output_first})
    run.bar.update(1)


async def _worker(run: _Run) -> None:
    num = run.options.num
    while not run.finished():
        if run.waiting and run.kept + run.completing < num:
            key, instruction = run.waiting.popleft()
            run.completing += 1
            try:
                await _complete(run, key, instruction)
            finally:
                run.completing -= 1
                run.changed.set()
        elif run.kept + run.completing + len(run.waiting) < num:
            await _brainstorm(run, run.take_brainstorm_id())
            run.changed.set()
        else:  # enough instructions are being completed; wait for one to finish
            run.changed.clear()
            await run.changed.wait()


async def _generate(run: _Run) -> None:
    """Run the workers; SIGTERM stops them (the requests in flight are dropped) and returns
    normally, so the outputs are written as after Ctrl-C."""
    workers = [asyncio.ensure_future(_worker(run)) for _ in range(run.options.concurrency)]
    loop = asyncio.get_running_loop()

    def terminate() -> None:
        run.terminated = True
        for worker in workers:
            worker.cancel()

    handled = threading.current_thread() is threading.main_thread()
    if handled:
        loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        await asyncio.gather(*workers)
    except asyncio.CancelledError:
        if not run.terminated:
            raise
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await run.client.close()


def _served_model(endpoint: str, api_key: str | None) -> str:
    """The first model an endpoint lists (for a run given --endpoint but no --model)."""
    url = chat_url(endpoint).removesuffix("/chat/completions") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        data = httpx.get(url, headers=headers, timeout=30).json()["data"]
        return str(data[0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        raise ConfigError(f"{url} lists no model; name one with --model") from None


@contextlib.contextmanager
def _endpoint(options: SelfInstructOptions) -> Iterator[tuple[str, str]]:
    """(endpoint, model name): the one given, or a local server started for the run."""
    if options.endpoint is not None:
        yield options.endpoint, options.model or _served_model(options.endpoint, options.api_key)
        return
    model = options.model or DEFAULT_LOCAL_MODEL
    log = options.output.with_name(f"{options.output.stem}.serve.log")
    with local_server(
        model, log, max_concurrent=options.concurrency + 1, threads=options.threads
    ) as url:
        yield url, model


def _open_progress(options: SelfInstructOptions, settings: dict[str, Any]) -> tuple[Progress, bool]:
    """The journal's progress (fresh: no journal yet), refusing to overwrite a stray output."""
    path = journal_path(options.output)
    if options.overwrite:
        path.unlink(missing_ok=True)
    if path.exists():
        progress = read_journal(path, settings)
        logger.info(
            "resuming %s: %d kept, %d queued, %d dropped so far",
            path,
            len(progress.kept),
            len(progress.queued),
            sum(progress.dropped.values()),
        )
        return progress, False
    if options.output.exists() and not options.overwrite:
        raise ConfigError(
            f"{options.output} exists and has no journal ({path.name}) to resume; "
            "choose another --output or pass --overwrite"
        )
    return Progress(), True


def run_selfinstruct(options: SelfInstructOptions) -> dict[str, Any]:
    """Generate up to ``options.num`` records; returns the run's statistics."""
    options.validate()
    if logging.getLogger("httpx").level == logging.NOTSET:  # one INFO line per request
        logging.getLogger("httpx").setLevel(logging.WARNING)
    seeds_path = options.seeds or shipped_seed_path(options.lang)
    seeds = read_seed_tasks(seeds_path)
    prompts = load_prompts(options.lang, options.prompts)
    seeds_sha = hashlib.sha256(Path(seeds_path).read_bytes()).hexdigest()[:16]
    settings = options.settings(seeds_sha, prompts.fingerprint())
    progress, fresh = _open_progress(options, settings)
    journal = Journal(journal_path(options.output), settings, fresh=fresh)
    journal.append({"type": "session", "started": time.time()})
    progress.sessions += 1
    earlier_s, stopped, started = progress.elapsed_s, "interrupted", time.monotonic()
    model = options.model
    run: _Run | None = None
    try:
        with _endpoint(options) as (endpoint, model):
            client = ChatClient(
                endpoint,
                model,
                stats=progress.requests,
                api_key=options.api_key,
                concurrency=options.concurrency,
                timeout_s=options.timeout_s,
                max_retries=options.max_retries,
                backoff_s=options.backoff_s,
                max_requests=options.request_budget,
            )
            run = _Run(options, prompts, seeds, progress, journal, client, started)
            asyncio.run(_generate(run))
            if run.terminated:
                stopped = "terminated"
            else:
                stopped = "done" if run.kept >= options.num else "request budget spent"
    finally:
        # the counters and time as they stand (requests after the last event included)
        journal.append(
            {
                "type": "stopped",
                "reason": stopped,
                "requests": progress.requests.to_dict(),
                "elapsed_s": round(time.monotonic() - started, 3),
            }
        )
        journal.close()
        if run is not None:
            run.bar.close()
        statistics = run_statistics(
            progress,
            earlier_s + time.monotonic() - started,
            stopped=stopped,
            lang=options.lang,
            endpoint=options.endpoint or "local llamaforge serve",
            model=model,
            seeds=str(seeds_path),
        )
        write_outputs(options.output, progress.kept, statistics)
    if stopped == "terminated":
        logger.warning("terminated: %d of %d records kept", len(progress.kept), options.num)
    elif stopped != "done":
        logger.warning(
            "stopped after %d requests (budget %d): %d of %d records kept; raise --max-requests "
            "and run the same command again to continue",
            progress.requests.sent,
            options.request_budget,
            len(progress.kept),
            options.num,
        )
    return statistics
