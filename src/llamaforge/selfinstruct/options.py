"""The options of ``llamaforge selfinstruct``, checked in one place.

Contract: :class:`SelfInstructOptions` is frozen; :meth:`SelfInstructOptions.validate`
raises one ConfigError listing every bad value with its flag. :meth:`settings` are the
options a resumed run must share with the journal it resumes (the others — endpoint,
model, ``--num``, concurrency, budget, timeouts — may change between sessions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamaforge.errors import ConfigError
from llamaforge.selfinstruct.seeds import LANGUAGES

# The model that `llamaforge serve` is started on when no --endpoint is given.
DEFAULT_LOCAL_MODEL = "smollm2-135m"
# Without --max-requests: this many HTTP requests per requested record, retries included
# (a kept record takes ~2-3 when the model is good; a weak one needs many more).
REQUESTS_PER_RECORD = 50


@dataclass(frozen=True)
class SelfInstructOptions:
    output: Path
    num: int = 100
    lang: str = "en"
    seeds: Path | None = None  # None: the shipped seed file for `lang`
    prompts: Path | None = None  # a directory of <name>.txt prompts replacing shipped ones
    endpoint: str | None = None  # None: start `llamaforge serve` on `model` locally
    model: str | None = None
    api_key: str | None = None
    concurrency: int = 4
    max_requests: int | None = None
    timeout_s: float = 300.0
    max_retries: int = 4
    backoff_s: float = 1.0
    threshold: float = 0.7
    min_words: int = 3
    max_words: int = 150
    examples: int = 8  # instructions shown per brainstorm request
    machine_examples: int = 2  # of which generated ones, once there are any
    new_per_request: int = 8
    temperature: float = 0.7
    brainstorm_tokens: int = 320
    instance_tokens: int = 256
    seed: int = 0
    threads: int | None = None  # torch threads of the local server
    overwrite: bool = False

    @property
    def request_budget(self) -> int:
        return (
            self.max_requests if self.max_requests is not None else REQUESTS_PER_RECORD * self.num
        )

    def validate(self) -> None:
        problems = []
        positive = {
            "--num": self.num,
            "--concurrency": self.concurrency,
            "--examples": self.examples,
            "--new-per-request": self.new_per_request,
            "--min-words": self.min_words,
            "--brainstorm-tokens": self.brainstorm_tokens,
            "--instance-tokens": self.instance_tokens,
        }
        problems += [
            f"{flag} must be >= 1 (got {value})" for flag, value in positive.items() if value < 1
        ]
        if self.lang not in LANGUAGES:
            problems.append(f"--lang must be one of: {', '.join(LANGUAGES)} (got '{self.lang}')")
        if self.max_requests is not None and self.max_requests < 1:
            problems.append(f"--max-requests must be >= 1 (got {self.max_requests})")
        if not 0 < self.threshold <= 1:
            problems.append(f"--threshold must be in (0, 1] (got {self.threshold})")
        if self.max_words < self.min_words:
            problems.append(
                f"--max-words ({self.max_words}) is below --min-words ({self.min_words})"
            )
        if not 0 <= self.machine_examples <= self.examples:
            problems.append(
                f"--machine-examples must be in 0..--examples (got {self.machine_examples})"
            )
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0:
            problems.append("--timeout must be > 0, --max-retries and --retry-backoff >= 0")
        if self.threads is not None and self.threads < 1:
            problems.append(f"--threads must be >= 1 (got {self.threads})")
        if not 0 <= self.temperature <= 2:
            problems.append(f"--temperature must be in 0..2 (got {self.temperature})")
        if self.output.suffix.lower() != ".json":
            problems.append(f"--output must be a .json file (Alpaca JSON), got '{self.output}'")
        if problems:
            raise ConfigError("selfinstruct: " + "; ".join(problems))

    def settings(self, seeds_sha: str, prompts_sha: str) -> dict[str, Any]:
        return {
            "lang": self.lang,
            "seeds_sha256": seeds_sha,
            "prompts_sha256": prompts_sha,
            "threshold": self.threshold,
            "min_words": self.min_words,
            "max_words": self.max_words,
            "seed": self.seed,
        }
