"""The continuous-batching scheduler on tiny random Llamas: batched rows equal solo generation."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from llamaforge.config import GenerationConfig, load_run_config
from llamaforge.inference import GenerationEngine
from llamaforge.serving.batching import BatchScheduler
from llamaforge.serving.model_pool import load_model_pool, parse_adapter
from llamaforge.serving.requests import (
    Failed,
    Finished,
    GenerationRequest,
    ServedModel,
    TextPiece,
)

PROMPTS = [
    "Hi",
    "What is the capital of France?",
    "Tell me a long story about dragons and knights, please.",
    "x",
    "Count: 1 2 3 4 5 6 7 8 9 10 11 12",
]
GREEDY = GenerationConfig(temperature=0, max_new_tokens=20)


class Collector:
    """Receives one request's events (on the scheduler thread)."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.result = None
        self.failed: str | None = None
        self.done = threading.Event()
        self.first_piece = threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, TextPiece):
            self.pieces.append(event.text)
            self.first_piece.set()
        elif isinstance(event, Finished):
            self.result = event.result
            self.done.set()
        else:
            assert isinstance(event, Failed)
            self.failed = event.message
            self.done.set()


def submit(scheduler, engine, prompt, gen, model="tiny", raw=False) -> tuple[Collector, object]:
    collector = Collector()
    request = GenerationRequest(
        model=model,
        prompt_ids=engine.encode(prompt, raw=raw),
        gen=gen,
        stops=engine.stop_strings(gen, raw=raw),
        on_event=collector,
        prompt=prompt,
        raw=raw,
    )
    scheduler.submit(request)
    return collector, request


@pytest.fixture
def engine(tiny_pool) -> GenerationEngine:
    return tiny_pool.served[tiny_pool.default].engine


@pytest.fixture
def scheduler(tiny_pool):
    scheduler = BatchScheduler(tiny_pool.model, {"tiny": tiny_pool.served[tiny_pool.default]})
    scheduler.start()
    yield scheduler
    scheduler.stop(timeout=10)
    assert not scheduler.running


def eventually(check, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def wait_all(collectors, timeout=30.0) -> None:
    for c in collectors:
        assert c.done.wait(timeout), "request did not finish"
        assert c.failed is None


def test_single_request_equals_generate(scheduler, engine):
    expected = engine.generate([PROMPTS[1]], GREEDY)[0]
    collector, _ = submit(scheduler, engine, PROMPTS[1], GREEDY)
    wait_all([collector])
    assert collector.result == expected
    assert "".join(collector.pieces) == expected.text
    assert len(collector.pieces) >= 5
    assert expected.completion_tokens == 20 and expected.finish_reason == "length"


def test_staggered_requests_share_steps_and_keep_their_text(scheduler, engine):
    expected = [engine.generate([p], GREEDY)[0] for p in PROMPTS]
    collectors = []
    for prompt in PROMPTS:  # each joins a batch that is already decoding
        collectors.append(submit(scheduler, engine, prompt, GREEDY)[0])
        time.sleep(0.004)
    wait_all(collectors)
    for collector, want in zip(collectors, expected, strict=True):
        assert collector.result.token_ids == want.token_ids
        assert "".join(collector.pieces) == want.text
    # Serialised decoding would take 5 x 20 = 100 forward passes.
    assert scheduler.steps < 60
    assert scheduler.active == 0
    assert eventually(lambda: scheduler.rows == 0)


def test_rows_finishing_early_leave_the_batch(scheduler, engine):
    short = GenerationConfig(temperature=0, max_new_tokens=3)
    long = GenerationConfig(temperature=0, max_new_tokens=25)
    gens = [long, short, long, short, long]
    expected = [engine.generate([p], g)[0] for p, g in zip(PROMPTS, gens, strict=True)]
    collectors = [submit(scheduler, engine, p, g)[0] for p, g in zip(PROMPTS, gens, strict=True)]
    wait_all(collectors)
    assert [c.result for c in collectors] == expected
    assert [c.result.completion_tokens for c in collectors] == [25, 3, 25, 3, 25]


def test_stop_string_cuts_the_text_and_is_never_streamed(scheduler, engine):
    full = engine.generate([PROMPTS[1]], GREEDY)[0].text
    stop = full[12:17]
    gen = GenerationConfig(temperature=0, max_new_tokens=20, stop=(stop,))
    expected = engine.generate([PROMPTS[1]], gen)[0]
    collector, _ = submit(scheduler, engine, PROMPTS[1], gen)
    wait_all([collector])
    assert collector.result == expected
    assert expected.text == full[: full.index(stop)]
    assert expected.finish_reason == "stop"
    assert "".join(collector.pieces) == expected.text


def test_max_new_tokens_one_finishes_at_prefill(scheduler, engine):
    gen = GenerationConfig(temperature=0, max_new_tokens=1)
    collector, _ = submit(scheduler, engine, PROMPTS[0], gen)
    wait_all([collector])
    assert collector.result == engine.generate([PROMPTS[0]], gen)[0]
    assert collector.result.completion_tokens == 1
    assert scheduler.steps == 1


def test_repetition_penalty_matches_generate(scheduler, engine):
    gen = GenerationConfig(temperature=0, max_new_tokens=20, repetition_penalty=1.5)
    expected = [engine.generate([p], gen)[0] for p in PROMPTS[:3]]
    plain = engine.generate([PROMPTS[0]], GREEDY)[0]
    assert expected[0].token_ids != plain.token_ids  # the penalty changes this output
    collectors = [submit(scheduler, engine, p, gen)[0] for p in PROMPTS[:3]]
    wait_all(collectors)
    assert [c.result for c in collectors] == expected


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(scheduler, engine):
    gen = GenerationConfig(temperature=1.0, top_k=40, top_p=0.9, max_new_tokens=15, sampling_seed=7)
    alone, _ = submit(scheduler, engine, PROMPTS[2], gen)
    wait_all([alone])
    others = [submit(scheduler, engine, p, GREEDY)[0] for p in PROMPTS]
    batched, _ = submit(scheduler, engine, PROMPTS[2], gen)
    other_seed, _ = submit(
        scheduler, engine, PROMPTS[2], GenerationConfig(**{**gen.__dict__, "sampling_seed": 8})
    )
    wait_all([*others, batched, other_seed])
    assert batched.result == alone.result
    assert other_seed.result.token_ids != alone.result.token_ids
    assert alone.result.token_ids != engine.generate([PROMPTS[2]], GREEDY)[0].token_ids[:15]


def test_top_k_one_sampling_is_greedy(scheduler, engine):
    gen = GenerationConfig(temperature=1.3, top_k=1, max_new_tokens=20)
    collector, _ = submit(scheduler, engine, PROMPTS[4], gen)
    wait_all([collector])
    assert collector.result.token_ids == engine.generate([PROMPTS[4]], GREEDY)[0].token_ids


def test_beam_search_request_equals_generate(scheduler, engine):
    gen = GenerationConfig(temperature=0, num_beams=3, max_new_tokens=10)
    collector, _ = submit(scheduler, engine, PROMPTS[1], gen)
    wait_all([collector])
    assert collector.result == engine.generate([PROMPTS[1]], gen)[0]
    assert collector.pieces == [collector.result.text]


def test_cancel_stops_before_the_next_step(scheduler, engine):
    gen = GenerationConfig(temperature=0, max_new_tokens=200)
    collector, request = submit(scheduler, engine, PROMPTS[2], gen)
    assert collector.first_piece.wait(10)
    request.cancel()
    assert eventually(lambda: scheduler.active == 0 and scheduler.rows == 0)
    record = next(r for r in scheduler.recent if r.request_id == request.id)
    assert record.outcome == "cancelled"
    assert record.tokens_at_cancel is not None
    # At most the step that was already running when cancel() was called.
    assert record.completion_tokens - record.tokens_at_cancel <= 1
    assert record.completion_tokens < 200
    assert not collector.done.is_set()  # a cancelled request gets no further events
    # The scheduler is immediately free for the next request.
    nxt, _ = submit(scheduler, engine, PROMPTS[0], GREEDY)
    wait_all([nxt], timeout=10)


def test_failed_forward_fails_its_rows_and_the_scheduler_goes_on(tiny_pool, engine):
    class Flaky(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.inner = model
            self.fail = True

        @property
        def device(self):
            return self.inner.device

        def forward(self, **kwargs):
            if self.fail:
                self.fail = False
                raise RuntimeError("boom /secret/path.py")
            return self.inner(**kwargs)

    scheduler = BatchScheduler(Flaky(tiny_pool.model), {"tiny": ServedModel("tiny", engine)})
    scheduler.start()
    try:
        broken, _ = submit(scheduler, engine, PROMPTS[0], GREEDY)
        assert broken.done.wait(10)
        assert broken.failed == "generation failed on the server"
        ok, _ = submit(scheduler, engine, PROMPTS[0], GREEDY)
        wait_all([ok])
        assert ok.result == engine.generate([PROMPTS[0]], GREEDY)[0]
    finally:
        scheduler.stop(10)


def test_stop_fails_requests_still_running(tiny_pool, engine):
    scheduler = BatchScheduler(tiny_pool.model, {"tiny": tiny_pool.served[tiny_pool.default]})
    scheduler.start()
    gen = GenerationConfig(temperature=0, max_new_tokens=220)
    collector, _ = submit(scheduler, engine, PROMPTS[0], gen)
    assert collector.first_piece.wait(10)
    scheduler.stop(10)
    assert collector.done.is_set()
    assert collector.failed == "the server is shutting down" or collector.result is not None
    assert scheduler.active == 0


# ---------------------------------------------------------------------------- adapters


def test_parse_adapter_names():
    assert parse_adapter("runs/sft-1") == ("sft-1", parse_adapter("runs/sft-1")[1])
    name, path = parse_adapter("alpaca=runs/sft-1")
    assert name == "alpaca" and str(path) == "runs/sft-1"


def test_base_and_two_adapters_batch_together(chatty_model_dir, lora_dirs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = load_run_config(None, (), model=str(chatty_model_dir))
    pool = load_model_pool(cfg, [f"first={lora_dirs[0]}", str(lora_dirs[1])])
    base_name = str(chatty_model_dir)
    assert list(pool.served) == [base_name, "first", lora_dirs[1].name]
    tokenizer = pool.served[base_name].engine.tokenizer

    def solo(adapter_dir):
        model = AutoModelForCausalLM.from_pretrained(chatty_model_dir).eval()
        if adapter_dir is not None:
            model = PeftModel.from_pretrained(model, adapter_dir).eval()
        return GenerationEngine(model, tokenizer).generate([PROMPTS[1]], GREEDY)[0]

    expected = {
        base_name: solo(None),
        "first": solo(lora_dirs[0]),
        lora_dirs[1].name: solo(lora_dirs[1]),
    }
    assert len({r.token_ids for r in expected.values()}) == 3  # the adapters matter

    scheduler = BatchScheduler(pool.model, pool.served)
    scheduler.start()
    try:
        collectors = {}
        for _ in range(2):  # interleaved: all three groups decode in the same loop turns
            for name, served in pool.served.items():
                collectors.setdefault(name, []).append(
                    submit(scheduler, served.engine, PROMPTS[1], GREEDY, model=name)[0]
                )
        wait_all([c for cs in collectors.values() for c in cs])
        for name, cs in collectors.items():
            for c in cs:
                assert c.result.token_ids == expected[name].token_ids, name
    finally:
        scheduler.stop(10)
