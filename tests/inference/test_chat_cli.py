"""`llamaforge chat` with a scripted input stream: history, /reset, /exit, EOF."""

from __future__ import annotations

import io

from llamaforge.config import load_run_config
from llamaforge.data.formats import Message
from llamaforge.inference import GenerationEngine
from llamaforge.inference.chat_cli import HELP, PROMPT, chat_loop, run_chat


class RecordingEngine(GenerationEngine):
    """Records the conversation each answer was generated for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conversations: list[list[Message]] = []

    def stream(self, prompt, gen, raw=False):
        self.conversations.append(list(prompt))
        return super().stream(prompt, gen, raw)


def test_two_turns_reset_exit(chatty_llama, smollm2_tokenizer):
    cfg = load_run_config(None, (), temperature=0, max_new_tokens=5, system_prompt="Be brief.")
    engine = RecordingEngine(chatty_llama, smollm2_tokenizer, system_prompt="Be brief.")
    script = io.StringIO("Hello\n\nWhat next?\n/reset\nAgain\n/exit\nnever read\n")
    out = io.StringIO()
    assert chat_loop(engine, cfg, script, out) == 0

    first = engine.generate(["Hello"], cfg.generation)[0].text
    second_turn = [
        Message("user", "Hello"),
        Message("assistant", first),
        Message("user", "What next?"),
    ]
    second = engine.generate([second_turn], cfg.generation)[0].text
    again = engine.generate(["Again"], cfg.generation)[0].text
    assert engine.conversations == [
        [Message("user", "Hello")],
        second_turn,
        [Message("user", "Again")],  # history cleared by /reset
    ]
    assert out.getvalue() == (
        f"{HELP}\n"
        f"{PROMPT}{first}\n"
        f"{PROMPT}"  # the empty line
        f"{PROMPT}{second}\n"
        f"{PROMPT}(history cleared)\n"
        f"{PROMPT}{again}\n"
        f"{PROMPT}"
    )
    # the system prompt applies to every turn
    assert engine.format_prompt(second_turn).startswith("<|im_start|>system\nBe brief.")


def test_end_of_input_quits(tiny_model_dir):
    cfg = load_run_config(None, (), model=str(tiny_model_dir), temperature=0, max_new_tokens=3)
    out = io.StringIO()
    assert run_chat(cfg, input_stream=io.StringIO("Hi\n"), output_stream=out) == 0
    text = out.getvalue()
    assert text.startswith(HELP + "\n" + PROMPT)
    assert text.endswith(PROMPT + "\n")
    assert text.count(PROMPT) == 2


def test_unknown_command_is_not_sent_to_the_model(chatty_llama, smollm2_tokenizer):
    cfg = load_run_config(None, (), temperature=0, max_new_tokens=3)
    engine = RecordingEngine(chatty_llama, smollm2_tokenizer)
    out = io.StringIO()
    assert chat_loop(engine, cfg, io.StringIO("/quit\n"), out) == 0
    assert engine.conversations == []
    assert "unknown command /quit" in out.getvalue()
