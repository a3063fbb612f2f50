"""A deterministic fake OpenAI chat endpoint for the self-instruct tests (imported by name).

It recognises the stage of a request by the shipped prompt it starts with and answers as a
model would — with a fixed share of answers each filter must catch — from the request's own
``seed`` (so an answer depends only on the request). With ``faults=True`` a request's body
hash also picks a fault: 429 / 500 / 502 once, malformed JSON once, ``choices: []`` twice, a
hang past the client's timeout once, always 500, a 400, or empty / null content.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llamaforge.selfinstruct.prompts import load_prompts

SYLLABLES = ["ka", "lo", "mi", "nu", "pe", "ri", "so", "tu", "va", "ze", "bo", "di", "fa", "gu"]
WORDS = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES]
VERBS = ["Describe", "Explain", "Summarize", "Compare", "List", "Suggest", "Rewrite", "Plan"]

# Fault kinds by body hash (modulo 20); the rest answer normally.
FAULTS = {
    0: "429 once",
    1: "500 once",
    2: "malformed JSON once",
    3: "hang once",
    4: "no choices twice",
    5: "500 always",
    6: "empty content",
    7: "null content",
    8: "400",
    9: "502 once",
}


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def brainstorm_answer(prompt: str, rng: random.Random) -> str:
    """Eight numbered instructions: most new, some for each instruction filter to drop."""
    examples = re.findall(r"^\d+\. (.+)$", prompt, re.M)
    lines = []
    for i in range(1, 9):
        roll = rng.random()
        if roll < 0.08:
            text = rng.choice(examples)  # exact duplicate
        elif roll < 0.12:
            text = rng.choice(examples).upper()  # near duplicate
        elif roll < 0.16:
            text = rng.choice(examples).rstrip(".?") + " today."  # ROUGE-L similar
        elif roll < 0.20:
            text = f"Draw a picture of {words(rng, 4)}."
        elif roll < 0.24:
            text = f"Write a program that {words(rng, 4)}."
        elif roll < 0.28:
            text = f"(Optional) {words(rng, 5)}."
        elif roll < 0.32:
            text = f"Hi {words(rng, 1)}"  # too short
        elif roll < 0.36:
            text = f"请写一首关于{rng.choice(['春天', '大海', '月亮'])}的诗 {words(rng, 1)}"
        elif roll < 0.38:
            text = f"Explain {words(rng, 160)}."  # too long
        elif roll < 0.48:
            text = f"Classify the {words(rng, 6)}."
        else:
            text = f"{rng.choice(VERBS)} the {words(rng, 3)} of {words(rng, 4)}."
        lines.append(f"{i}. {text}")
    return "Here are new tasks:\n" + "\n".join(lines)


def instance_answer(rng: random.Random, output_first: bool) -> str:
    """One instance; some unreadable, empty, input == output or in Chinese."""
    roll = rng.random()
    if roll < 0.06:
        return f"Input: {words(rng, 4)}"  # no output
    if roll < 0.12:
        same = words(rng, 4)
        return f"Input: {same}\nOutput: {same}"
    if roll < 0.18:
        return "Input: none\nOutput: "
    if roll < 0.24:
        return f"Input: {words(rng, 3)}\nOutput: 这是一个用中文写的回答"
    if output_first:
        return f"Class label: {rng.choice(['Positive', 'Negative'])}\nInput: {words(rng, 5)}"
    if roll < 0.4:
        return f"{words(rng, 8)}."  # a task without input: just the answer
    given = "none" if roll < 0.6 else words(rng, 4)
    return f"Input: {given}\nOutput: {words(rng, 8)}."


# fmt: off
ZH_WORDS = ["春天", "大海", "月亮", "城市", "朋友", "学校", "电脑", "历史", "天气", "森林", "河流",
            "早餐", "火车", "医生", "科学", "节日", "运动", "书店", "花园", "山脉", "市场", "邮件"]
# fmt: on
ZH_VERBS = ["介绍", "解释", "比较", "总结", "描述", "评价"]


def brainstorm_answer_zh(prompt: str, rng: random.Random) -> str:
    """Eight numbered Chinese instructions: new ones, copies, paraphrases, English, a drawing."""
    examples = re.findall(r"^\d+\. (.+)$", prompt, re.M)
    lines = []
    for i in range(1, 9):
        roll = rng.random()
        if roll < 0.1:
            text = rng.choice(examples)
        elif roll < 0.25:
            text = rng.choice(examples).rstrip("。？") + "吧。"  # a paraphrase
        elif roll < 0.35:
            text = "Describe the history of the city in three sentences."
        elif roll < 0.42:
            text = f"画一只{rng.choice(ZH_WORDS)}。"
        else:
            text = rng.choice(ZH_VERBS) + "".join(rng.sample(ZH_WORDS, 5)) + "。"
        lines.append(f"{i}. {text}")
    return "\n".join(lines)


class FakeEndpoint:
    """``with FakeEndpoint() as fake:`` serves ``fake.url`` from a thread."""

    def __init__(
        self, *, faults: bool = False, delay_s: float = 0.0, hang_s: float = 1.0, lang: str = "en"
    ) -> None:
        self.faults, self.delay_s, self.hang_s, self.lang = faults, delay_s, hang_s, lang
        prompts = load_prompts(lang)
        self.prefixes = {
            name: template.template.split("$")[0][:40]
            for name, template in prompts.templates.items()
        }
        self.attempts: Counter[str] = Counter()
        self.faults_served: Counter[str] = Counter()
        self.requests = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    fake.send(self, 200, json.dumps({"data": [{"id": "fake-model"}]}).encode())
                else:
                    fake.send(self, 404, b'{"error": {"message": "no such endpoint"}}')

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, payload, headers = fake.answer(body)
                fake.send(self, status, payload, headers)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def send(handler: BaseHTTPRequestHandler, status: int, payload: bytes, headers=None) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout it was meant to hit)

    def stage(self, content: str) -> str:
        return next(name for name, prefix in self.prefixes.items() if content.startswith(prefix))

    def reply(self, content: str, seed: int) -> str:
        rng = random.Random(seed)
        stage = self.stage(content)
        if self.lang == "zh":
            if stage == "brainstorm":
                return brainstorm_answer_zh(content, rng)
            instruction = content.rsplit("任务：", 1)[1].strip().splitlines()[0]
            if stage == "classify":
                return "否"
            return "输入：无\n输出：" + "".join(rng.sample(ZH_WORDS, 4)) + "。"
        if stage == "brainstorm":
            return brainstorm_answer(content, rng)
        instruction = content.rsplit("Task: ", 1)[1].strip().splitlines()[0]
        if stage == "classify":
            return "Yes" if instruction.startswith("Classify") else "No"
        return instance_answer(rng, stage == "instance_output_first")

    def answer(self, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        request = json.loads(body)
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            attempt = self.attempts[digest]
            self.attempts[digest] += 1
            self.requests += 1
        time.sleep(self.delay_s)
        fault = FAULTS.get(int(digest, 16) % 20) if self.faults else None
        content: str | None = self.reply(request["messages"][0]["content"], request["seed"])
        if fault is not None:
            self.faults_served[fault] += 1
        if fault in ("429 once", "500 once", "502 once") and attempt == 0:
            status = int(fault.split()[0])
            return status, b'{"error": {"message": "busy"}}', {"Retry-After": "0"}
        if fault == "500 always":
            return 500, b'{"error": {"message": "broken"}}', {}
        if fault == "400":
            return 400, b'{"error": {"message": "prompt too long"}}', {}
        if fault == "malformed JSON once" and attempt == 0:
            return 200, b'{"choices": [{"message": ', {}
        if fault == "no choices twice" and attempt < 2:
            return 200, b'{"choices": []}', {}
        if fault == "hang once" and attempt == 0:
            time.sleep(self.hang_s)
        if fault == "empty content":
            content = ""
        if fault == "null content":
            content = None
        usage = {
            "prompt_tokens": len(request["messages"][0]["content"]) // 4,
            "completion_tokens": 7,
        }
        choice = {"index": 0, "message": {"role": "assistant", "content": content}}
        return 200, json.dumps({"choices": [choice], "usage": usage}).encode(), {}
