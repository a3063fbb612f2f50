"""The official openai client (sync and async) and LangChain against the server on SmolLM2."""

from __future__ import annotations

import asyncio

import pytest

from llamaforge.cli import main
from llamaforge.config import GenerationConfig
from llamaforge.data.formats import Message

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

pytestmark = pytest.mark.slow

KEY = "sk-local"
MODEL = "smollm2-135m"
FRANCE = "What is the capital of France?"
SKY = "Explain in one sentence why the sky is blue."


@pytest.fixture(scope="module")
def server(smollm2_pool, serve):
    with serve(smollm2_pool, api_key=KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def engine(smollm2_pool):
    return smollm2_pool.served[MODEL].engine


def ask(client, content, **kwargs):
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kwargs
    )


def test_list_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "llamaforge"


def test_chat_answers_and_counts_usage_like_the_tokenizer(client, engine):
    reply = ask(client, FRANCE, max_tokens=16)
    choice = reply.choices[0]
    assert choice.message.content == "The capital of France is Paris."
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    prompt_ids = engine.encode([Message("user", FRANCE)])
    answer_ids = engine.tokenizer(choice.message.content, add_special_tokens=False)["input_ids"]
    assert reply.usage.prompt_tokens == len(prompt_ids)
    # The answer's tokens plus the <|im_end|> that ended it.
    assert reply.usage.completion_tokens == len(answer_ids) + 1
    assert reply.usage.total_tokens == len(prompt_ids) + len(answer_ids) + 1


def test_greedy_output_equals_generate_command(client, capsys):
    reply = ask(client, SKY, max_tokens=24)
    capsys.readouterr()
    args = ["--model", MODEL, "--prompt", SKY, "--temperature", "0", "--max-new-tokens", "24"]
    code = main(["generate", *args])
    assert code == 0
    assert capsys.readouterr().out == reply.choices[0].message.content + "\n"
    assert len(reply.choices[0].message.content) > 40


def test_streaming_equals_non_streaming(client):
    full = ask(client, SKY, max_tokens=24)
    stream = ask(client, SKY, max_tokens=24, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 5
    assert "".join(pieces) == full.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == full.choices[0].finish_reason and set(finals[:-1]) == {None}
    assert chunks[-1].choices == []
    assert chunks[-1].usage == full.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_and_max_tokens(client):
    stopped = ask(client, FRANCE, max_tokens=16, stop=["Paris"])
    assert stopped.choices[0].message.content == "The capital of France is "
    assert stopped.choices[0].finish_reason == "stop"
    short = ask(client, SKY, max_tokens=5)
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 5
    streamed = ask(client, FRANCE, max_tokens=16, stop="France", stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == "The capital of "


def test_completions_endpoint_is_raw_text(client, engine):
    gen = GenerationConfig(temperature=0, max_new_tokens=8)
    expected = engine.generate(["The capital of France is"], gen, raw=True)[0]
    reply = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert reply.choices[0].text == expected.text
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == expected.completion_tokens


def test_seeded_n_choices_differ_and_reproduce(client):
    kwargs = {"max_tokens": 8, "temperature": 1.0, "seed": 1234, "n": 3}
    first = ask(client, "Write a word.", **kwargs)
    again = ask(client, "Write a word.", **kwargs)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1
    assert first.usage.prompt_tokens == again.usage.prompt_tokens  # counted once, not n times


def test_extensions_top_k_and_repetition_penalty(client):
    greedy = ask(client, SKY, max_tokens=12)
    top1 = ask(client, SKY, max_tokens=12, temperature=1.5, extra_body={"top_k": 1})
    assert top1.choices[0].message.content == greedy.choices[0].message.content
    penalised = ask(client, SKY, max_tokens=12, extra_body={"repetition_penalty": 2.0})
    assert penalised.choices[0].message.content != greedy.choices[0].message.content


def test_async_client_concurrent_requests(server, client):
    expected = [ask(client, q, max_tokens=10).choices[0].message.content for q in (FRANCE, SKY)]

    async def run():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY) as aclient:

            async def one(q):
                return await aclient.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": q}],
                    max_tokens=10,
                    temperature=0,
                )

            async def streamed(q):
                stream = await aclient.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": q}],
                    max_tokens=10,
                    temperature=0,
                    stream=True,
                )
                return "".join([c.choices[0].delta.content or "" async for c in stream])

            return await asyncio.gather(one(FRANCE), one(SKY), streamed(FRANCE), streamed(SKY))

    a, b, c, d = asyncio.run(run())
    assert [a.choices[0].message.content, b.choices[0].message.content] == expected
    assert [c, d] == expected


def test_langchain_chat_model(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(
        base_url=f"{server.url}/v1", api_key=KEY, model=MODEL, temperature=0, max_tokens=16
    )
    assert chat.invoke(FRANCE).content == "The capital of France is Paris."
    assert "".join(chunk.content for chunk in chat.stream(FRANCE)) == (
        "The capital of France is Paris."
    )
