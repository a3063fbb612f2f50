"""One server, a base model and two LoRA adapters, chosen by the request's ``model`` field."""

from __future__ import annotations

import pytest

from llamaforge.config import GenerationConfig, load_run_config
from llamaforge.serving.model_pool import load_model_pool

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


def test_model_field_picks_the_adapter(chatty_model_dir, lora_dirs, serve):
    cfg = load_run_config(None, (), model=str(chatty_model_dir))
    pool = load_model_pool(cfg, [f"first={lora_dirs[0]}", f"second={lora_dirs[1]}"])
    base = str(chatty_model_dir)
    gen = GenerationConfig(temperature=0, max_new_tokens=10)
    # Each served model's own greedy answer, computed through the shared peft model.
    expected = {}
    for name, served in pool.served.items():
        if served.adapter is None:
            with pool.model.disable_adapter():
                expected[name] = served.engine.generate(["Hello"], gen)[0].text
        else:
            pool.model.set_adapter(served.adapter)
            expected[name] = served.engine.generate(["Hello"], gen)[0].text
    assert len(set(expected.values())) == 3
    with serve(pool) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert listed == [base, "first", "second"]
        for name in (base, "first", "second", "first"):
            reply = client.post(
                "/v1/chat/completions",
                json={
                    "model": name,
                    "messages": [{"role": "user", "content": "Hello"}],
                    "max_tokens": 10,
                    "temperature": 0,
                },
            ).json()
            assert reply["model"] == name
            assert reply["choices"][0]["message"]["content"] == expected[name], name
        missing = client.post(
            "/v1/chat/completions",
            json={"model": "third", "messages": [{"role": "user", "content": "Hello"}]},
        )
        assert missing.status_code == 404
        assert "choose one of: " + ", ".join([base, "first", "second"]) in missing.text
