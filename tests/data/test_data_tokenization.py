"""Token ids and label masks, token by token, for every template, against the real
SmolLM2 tokenizer (no BOS; EOS = pad = <|im_end|> = 2; bos_token = <|im_start|> = 1).

Expected ids are built from literal template text written out here, tokenized piece by
piece: ``enc(prompt) + enc(answer) + [EOS]``; they never come from the code under test.
"""

from __future__ import annotations

import copy

import pytest

from llamaforge.data import (
    Conversation,
    Message,
    encode_prompt,
    get_template,
    render_prompt,
    tokenize_conversation,
    tokenize_text,
)
from llamaforge.data.formats import TextDocument
from llamaforge.errors import ConfigError

EOS = 2
BOS = 1
M = -100

SINGLE = Conversation(
    (Message("user", "Name the capital of France."), Message("assistant", "Paris.")), "t"
)
WITH_INPUT = Conversation(
    (Message("user", "Translate to French.", "Good morning"), Message("assistant", "Bonjour")),
    "t",
)
MULTI = Conversation(
    (
        Message("system", "Answer briefly."),
        Message("user", "Hi"),
        Message("assistant", "Hello! How can I help?"),
        Message("user", "What is 2+2?"),
        Message("assistant", "4"),
    ),
    "t",
)

# Literal prompt text per prompt template: (no input, with input) for one instruction.
PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
PREAMBLE_INPUT = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n"
VIGOGNE = "Ci-dessous se trouve une instruction qui décrit une tâche. Écrivez une réponse qui complète correctement la demande.\n\n"
VIGOGNE_INPUT = "Ci-dessous se trouve une instruction qui décrit une tâche, associée à une entrée qui fournit un contexte supplémentaire. Écrivez une réponse qui complète correctement la demande.\n\n"
PROMPTS = {
    "alpaca": (
        lambda i: f"{PREAMBLE}### Instruction:\n{i}\n\n### Response:\n",
        lambda i, x: f"{PREAMBLE_INPUT}### Instruction:\n{i}\n\n### Input:\n{x}\n\n### Response:\n",
    ),
    "alpaca_legacy": (
        lambda i: f"{PREAMBLE}### Instruction:\n{i}\n\n### Response:",
        lambda i, x: f"{PREAMBLE_INPUT}### Instruction:\n{i}\n\n### Input:\n{x}\n\n### Response:",
    ),
    "alpaca_short": (
        lambda i: f"### Instruction:\n{i}\n\n### Response:\n",
        lambda i, x: f"### Instruction:\n{i}\n\n### Input:\n{x}\n\n### Response:\n",
    ),
    "vigogne": (
        lambda i: f"{VIGOGNE}### Instruction:\n{i}\n\n### Réponse:\n",
        lambda i, x: f"{VIGOGNE_INPUT}### Instruction:\n{i}\n\n### Entrée:\n{x}\n\n### Réponse:\n",
    ),
}
SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def build(tok, pieces: list[tuple[str | list[int], bool]]) -> tuple[list[int], list[int]]:
    """(text or ids, trained) pieces → expected input_ids and labels."""
    ids: list[int] = []
    labels: list[int] = []
    for piece, trained in pieces:
        part = enc(tok, piece) if isinstance(piece, str) else piece
        ids += part
        labels += part if trained else [M] * len(part)
    return ids, labels


def check(example: dict, ids: list[int], labels: list[int]) -> None:
    assert example["input_ids"] == ids
    assert example["labels"] == labels
    assert example["attention_mask"] == [1] * len(ids)


def test_tokenizer_facts(tok):
    # The expectations below rely on these properties of the bundled tokenizer.
    assert (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_start|>")) == (EOS, BOS)
    assert tok("Hi").input_ids == enc(tok, "Hi")  # no BOS added


# ---------------------------------------------------------------------------- prompt templates


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_template_single_turn(tok, name):
    no_input, _ = PROMPTS[name]
    ex = tokenize_conversation(SINGLE, tok, name, cutoff_len=1024)
    ids, labels = build(
        tok, [(no_input("Name the capital of France."), False), ("Paris.", True), ([EOS], True)]
    )
    check(ex, ids, labels)
    assert labels.count(M) == len(enc(tok, no_input("Name the capital of France.")))


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_template_with_input(tok, name):
    _, with_input = PROMPTS[name]
    ex = tokenize_conversation(WITH_INPUT, tok, name, cutoff_len=1024)
    prompt = with_input("Translate to French.", "Good morning")
    check(ex, *build(tok, [(prompt, False), ("Bonjour", True), ([EOS], True)]))


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_template_multi_turn_trains_every_answer(tok, name):
    no_input, _ = PROMPTS[name]
    ex = tokenize_conversation(MULTI, tok, name, cutoff_len=1024)
    pieces = [
        ("Answer briefly.\n\n" + no_input("Hi"), False),
        ("Hello! How can I help?", True),
        ([EOS], True),
        ("\n\n" + no_input("What is 2+2?"), False),
        ("4", True),
        ([EOS], True),
    ]
    check(ex, *build(tok, pieces))
    trained = [i for i, label in zip(ex["input_ids"], ex["labels"], strict=True) if label != M]
    assert trained == [*enc(tok, "Hello! How can I help?"), EOS, *enc(tok, "4"), EOS]


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_template_train_on_inputs_labels_everything(tok, name):
    ex = tokenize_conversation(MULTI, tok, name, cutoff_len=1024, train_on_inputs=True)
    assert ex["labels"] == ex["input_ids"]
    assert ex["input_ids"] == tokenize_conversation(MULTI, tok, name, 1024)["input_ids"]


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_template_without_eos(tok, name):
    no_input, _ = PROMPTS[name]
    ex = tokenize_conversation(SINGLE, tok, name, cutoff_len=1024, add_eos_token=False)
    check(ex, *build(tok, [(no_input("Name the capital of France."), False), ("Paris.", True)]))
    assert EOS not in ex["input_ids"]


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_template_truncation_keeps_the_beginning(tok, name):
    no_input, _ = PROMPTS[name]
    prompt = enc(tok, no_input("Name the capital of France."))
    answer = enc(tok, "Paris.")
    assert len(answer) >= 2
    ex = tokenize_conversation(SINGLE, tok, name, cutoff_len=len(prompt) + 1)
    check(ex, prompt + answer[:1], [M] * len(prompt) + answer[:1])
    # Cut inside the prompt: nothing left to train on.
    ex = tokenize_conversation(SINGLE, tok, name, cutoff_len=5)
    check(ex, prompt[:5], [M] * 5)


def test_prompt_template_adds_the_tokenizers_bos_and_masks_it(tok):
    from tokenizers.processors import TemplateProcessing

    bos_tok = copy.deepcopy(tok)
    bos_tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", BOS)]
    )
    assert bos_tok("a").input_ids == [BOS, *enc(tok, "a")]
    ex = tokenize_conversation(SINGLE, bos_tok, "alpaca_short", cutoff_len=1024)
    prompt = PROMPTS["alpaca_short"][0]("Name the capital of France.")
    check(ex, *build(tok, [([BOS], False), (prompt, False), ("Paris.", True), ([EOS], True)]))
    assert encode_prompt(bos_tok, "alpaca_short", SINGLE.messages[:1]) == [BOS, *enc(tok, prompt)]
    # Chat templates write BOS themselves (llama3 starts with {{ bos_token }}): no second one.
    ex = tokenize_conversation(SINGLE, bos_tok, "llama3", cutoff_len=1024)
    assert ex["input_ids"][:2] != [BOS, BOS] and ex["input_ids"][0] == BOS


# ---------------------------------------------------------------------------- chat templates


def chat_multi_expected(name: str) -> list[tuple[str | list[int], bool]]:
    if name in ("chat", "chatml"):
        return [
            (
                "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
                False,
            ),
            ("Hello! How can I help?", True),
            ([EOS], True),
            ("\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", False),
            ("4", True),
            ([EOS], True),
            ("\n", False),
        ]
    if name == "llama2":
        return [
            ([BOS], False),
            ("[INST] <<SYS>>\nAnswer briefly.\n<</SYS>>\n\nHi [/INST]", False),
            (" Hello! How can I help? ", True),
            ([EOS], True),
            ([BOS], False),
            ("[INST] What is 2+2? [/INST]", False),
            (" 4 ", True),
            ([EOS], True),
        ]
    assert name == "llama3"
    return [
        ([BOS], False),
        (
            "<|start_header_id|>system<|end_header_id|>\n\nAnswer briefly.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            False,
        ),
        # SmolLM2 has no <|eot_id|> token: the marker is text, trained as the stop.
        ("Hello! How can I help?<|eot_id|>", True),
        (
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            False,
        ),
        ("4<|eot_id|>", True),
    ]


CHAT = ["chat", "chatml", "llama2", "llama3"]


@pytest.mark.parametrize("name", CHAT)
def test_chat_template_multi_turn(tok, name):
    ex = tokenize_conversation(MULTI, tok, name, cutoff_len=1024)
    check(ex, *build(tok, chat_multi_expected(name)))


@pytest.mark.parametrize("name", CHAT)
def test_chat_template_single_turn(tok, name):
    ex = tokenize_conversation(WITH_INPUT, tok, name, cutoff_len=1024)
    user = "Translate to French.\n\nGood morning"  # Alpaca input joins the user turn
    expected = {
        "chat": [
            (SMOL_SYSTEM + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", False),
            ("Bonjour", True),
            ([EOS], True),
            ("\n", False),
        ],
        "chatml": [
            (f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", False),
            ("Bonjour", True),
            ([EOS], True),
            ("\n", False),
        ],
        "llama2": [
            ([BOS], False),
            (f"[INST] {user} [/INST]", False),
            (" Bonjour ", True),
            ([EOS], True),
        ],
        "llama3": [
            ([BOS], False),
            (
                f"<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n",
                False,
            ),
            ("Bonjour<|eot_id|>", True),
        ],
    }[name]
    check(ex, *build(tok, expected))


@pytest.mark.parametrize("name", CHAT)
def test_chat_template_train_on_inputs_and_truncation(tok, name):
    full = tokenize_conversation(MULTI, tok, name, cutoff_len=1024)
    ex = tokenize_conversation(MULTI, tok, name, cutoff_len=1024, train_on_inputs=True)
    assert ex["input_ids"] == full["input_ids"] and ex["labels"] == ex["input_ids"]
    # Cut two tokens into the first answer: the beginning stays, labels follow.
    first_trained = next(i for i, label in enumerate(full["labels"]) if label != M)
    cut = first_trained + 2
    ex = tokenize_conversation(MULTI, tok, name, cutoff_len=cut)
    assert ex["input_ids"] == full["input_ids"][:cut]
    assert ex["labels"] == [M] * first_trained + full["input_ids"][first_trained:cut]


@pytest.mark.parametrize("name", CHAT)
def test_chat_template_end_marker_is_the_stop_whatever_add_eos_token(tok, name):
    on = tokenize_conversation(MULTI, tok, name, cutoff_len=1024, add_eos_token=True)
    off = tokenize_conversation(MULTI, tok, name, cutoff_len=1024, add_eos_token=False)
    assert on == off


def test_chat_template_without_end_marker_gets_eos_when_asked(tok, tmp_path):
    (tmp_path / "plain.jinja").write_text(
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    tpl = get_template("plain", tmp_path)
    on = tokenize_conversation(SINGLE, tok, tpl, cutoff_len=1024)
    off = tokenize_conversation(SINGLE, tok, tpl, cutoff_len=1024, add_eos_token=False)
    # The answer segment is "Paris.\n" (the template's newline follows it).
    prompt = "user: Name the capital of France.\nassistant: "
    check(on, *build(tok, [(prompt, False), ("Paris.\n", True), ([EOS], True)]))
    check(off, *build(tok, [(prompt, False), ("Paris.\n", True)]))


# ---------------------------------------------------------------------------- inference prompts


@pytest.mark.parametrize("name", [*PROMPTS, *CHAT])
def test_generation_prompt_is_the_trained_prompt(tok, name):
    """The ids fed at inference equal the ids before each answer in training."""
    full = tokenize_conversation(MULTI, tok, name, cutoff_len=1024)
    starts = [
        i
        for i, label in enumerate(full["labels"])
        if label != M and (i == 0 or full["labels"][i - 1] == M)
    ]
    assert len(starts) == 2
    for history, start in ((MULTI.messages[:2], starts[0]), (MULTI.messages[:4], starts[1])):
        ids = encode_prompt(tok, name, history)
        assert ids == full["input_ids"][:start]
        # SmolLM2 adds no BOS, so plain tokenization of the rendered text agrees too,
        # except llama3: its markers are plain text in this vocabulary and BPE merges
        # "...<|eot_id|>" + "<|start_header_id|>" across the turn boundary ("><"). That
        # is why inference must use encode_prompt.
        if name != "llama3":
            assert enc(tok, render_prompt(tok, name, history)) == ids


def test_render_prompt_text(tok):
    text = render_prompt(tok, "alpaca", [Message("user", "Say hi.")])
    assert text == f"{PREAMBLE}### Instruction:\nSay hi.\n\n### Response:\n"
    text = render_prompt(tok, "chatml", [Message("system", "S"), Message("user", "Q")])
    assert (
        text
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_template_missing_gives_a_config_error(tok):
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(ConfigError, match=r"no chat template; set `template: alpaca`"):
        tokenize_conversation(SINGLE, bare, "chat", cutoff_len=64)


# ---------------------------------------------------------------------------- raw text


def test_tokenize_text_chunks_and_trains_every_token(tok):
    text = "one two three four five six seven"
    ids = enc(tok, text)
    chunks = tokenize_text(TextDocument(text), tok, cutoff_len=3)
    flat = [i for c in chunks for i in c["input_ids"]]
    assert flat == [*ids, EOS]
    assert [len(c["input_ids"]) for c in chunks][:-1] == [3] * (len(chunks) - 1)
    assert all(c["labels"] == c["input_ids"] for c in chunks)
    assert tokenize_text(TextDocument(text), tok, 1024, add_eos_token=False)[0]["input_ids"] == ids


# ---------------------------------------------------------------------------- template registry


def test_template_registry_and_user_templates(tok, tmp_path):
    from llamaforge.data import TEMPLATES, PromptTemplate

    assert set(TEMPLATES) >= {"chat", "chatml", "llama2", "llama3", *PROMPTS}
    with pytest.raises(ConfigError, match=r"unknown template 'alpacca'; choose one of: .*alpaca"):
        get_template("alpacca")
    (tmp_path / "qa.json").write_text(
        '{"description": "Q/A", "prompt_input": "Q: {instruction}\\nC: {input}\\nA:",'
        ' "prompt_no_input": "Q: {instruction}\\nA:", "response_split": "A:"}',
        encoding="utf-8",
    )
    tpl = get_template("qa", tmp_path)
    assert isinstance(tpl, PromptTemplate)
    assert tpl.format_prompt("Why?", output=" Because.") == "Q: Why?\nA: Because."
    assert tpl.format_prompt("Why?", "ctx") == "Q: Why?\nC: ctx\nA:"
    assert tpl.get_response("Q: Why?\nA: Because. ") == "Because."
    ex = tokenize_conversation(SINGLE, tok, "qa", 1024, templates_dir=tmp_path)
    prompt = enc(tok, "Q: Name the capital of France.\nA:")
    assert ex["labels"] == [M] * len(prompt) + enc(tok, "Paris.") + [EOS]
    with pytest.raises(ConfigError, match="unknown template 'qa'"):
        get_template("qa")  # not without its templates_dir


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '{"prompt_input": "{instruction}", "prompt_no_input": "{instruction}", "response_split": "x"}',
            r"key 'prompt_input' has placeholders \['instruction'\], expected \['input', 'instruction'\]",
        ),
        (
            '{"prompt_input": "{instruction}{input}", "prompt_no_input": "{instruction}"}',
            "key 'response_split' must be a non-empty string",
        ),
        ('{"prompt_input": ', "invalid JSON"),
    ],
)
def test_bad_user_prompt_template(tmp_path, body, message):
    (tmp_path / "bad.json").write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        get_template("bad", tmp_path)
    assert str(tmp_path / "bad.json") in str(info.value)


def test_get_response_and_stop_strings(tok):
    from llamaforge.data import stop_strings_for

    alpaca = get_template("alpaca")
    assert (
        alpaca.get_response(f"{PREAMBLE}### Instruction:\nQ\n\n### Response:\n  Paris. \n")
        == "Paris."
    )
    assert alpaca.get_response("no marker") == ""
    assert get_template("vigogne").get_response("### Réponse:\nOui") == "Oui"
    assert stop_strings_for("alpaca", tok) == ["### Instruction:", "<|im_end|>"]
    assert stop_strings_for("chat", tok) == ["<|im_end|>"]
    assert stop_strings_for("llama3", tok) == ["<|eot_id|>", "<|im_end|>"]


def test_chat_template_refusals(tok, tmp_path):
    from llamaforge.errors import DataError

    (tmp_path / "strict.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system messages') }}{% endif %}"
        "{{ m['role'] + ': ' + m['content'] + '<|im_end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}",
        encoding="utf-8",
    )
    with pytest.raises(
        DataError, match=r"^t: the chat template refused this conversation \(.*no system messages"
    ):
        tokenize_conversation(MULTI, tok, "strict", 1024, templates_dir=tmp_path)
    (tmp_path / "broken.jinja").write_text("{% for m in messages %}", encoding="utf-8")
    with pytest.raises(ConfigError, match="Jinja syntax error"):
        tokenize_conversation(SINGLE, tok, "broken", 1024, templates_dir=tmp_path)
