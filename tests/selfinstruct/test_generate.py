"""The self-instruct loop against the fake endpoint: faults, filters, budget, resuming."""

from __future__ import annotations

import json

import pytest
from selfinstruct_fakes import FAULTS, FakeEndpoint
from selfinstruct_helpers import check_statistics, journal_kept, recheck_records

from llamaforge.cli import main
from llamaforge.errors import ConfigError, DataError
from llamaforge.selfinstruct import run_selfinstruct
from llamaforge.selfinstruct.filters import REASONS


def test_faults_are_retried_or_skipped_and_every_kept_record_is_clean(quick_options, tmp_path):
    # One request at a time: the run (and so which fault each request meets) is the same
    # every time.
    with FakeEndpoint(faults=True, hang_s=0.4) as fake:
        options = quick_options(fake.url, num=60, concurrency=1, timeout_s=0.15, max_retries=3)
        stats = run_selfinstruct(options)
    assert set(fake.faults_served) == set(FAULTS.values())

    records = json.loads(options.output.read_text(encoding="utf-8"))
    assert stats["stopped"] == "done" and len(records) == 60
    recheck_records(records)
    check_statistics(stats, records)
    assert stats == json.loads((tmp_path / "out" / "data.stats.json").read_text())
    # every filter fired, and the faults that cannot be retried away were skipped
    assert {reason for reason, n in stats["dropped_by_reason"].items() if n} == set(REASONS)
    requests = stats["requests"]
    assert {"429", "500", "502", "400", "timeout", "malformed"} <= set(requests["errors"])
    assert requests["retried"] > 0 and requests["failed"] > 0 and requests["empty_answers"] > 0
    assert requests["sent"] == fake.requests
    assert stats["classification_tasks"] > 0
    registry = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    assert registry["data"] == {"file_name": "data.json", "formatting": "alpaca"}


def test_a_chinese_run_drops_paraphrases_by_segmented_rouge(quick_options):
    with FakeEndpoint(lang="zh") as fake:
        stats = run_selfinstruct(quick_options(fake.url, num=15, lang="zh"))
    records = json.loads(quick_options(None).output.read_text(encoding="utf-8"))
    assert len(records) == 15
    recheck_records(records, lang="zh")
    check_statistics(stats, records)
    dropped = stats["dropped_by_reason"]
    # paraphrases ("...吧。") are caught only by the segmented ROUGE-L
    assert dropped["similar"] > 0 and dropped["exact_duplicate"] > 0
    assert dropped["wrong_language"] > 0 and dropped["blacklisted"] > 0


def test_the_budget_stops_the_run_and_a_rerun_continues_it(quick_options, caplog):
    with FakeEndpoint() as fake:
        first = run_selfinstruct(quick_options(fake.url, num=15, max_requests=12))
        kept_first = json.loads(quick_options(None).output.read_text())
        assert first["stopped"] == "request budget spent"
        assert first["requests"]["sent"] == fake.requests == 12
        assert 0 < len(kept_first) < 15
        assert "raise --max-requests" in caplog.text

        second = run_selfinstruct(quick_options(fake.url, num=15))
    records = json.loads(quick_options(None).output.read_text())
    assert second["stopped"] == "done" and len(records) == 15
    assert records[: len(kept_first)] == kept_first
    assert second["sessions"] == 2 and second["requests"]["sent"] == fake.requests
    recheck_records(records)
    check_statistics(second, records)


def test_a_torn_last_journal_line_is_cut_off_and_the_run_resumes(quick_options):
    options = quick_options(None, num=5)
    journal = options.output.with_name("data.journal.jsonl")
    with FakeEndpoint() as fake:
        run_selfinstruct(quick_options(fake.url, num=5))
        with journal.open("a", encoding="utf-8") as f:
            f.write('{"type": "kept", "key": "99.0", "record": {"instr')  # a kill mid-write
        stats = run_selfinstruct(quick_options(fake.url, num=8))
    records = json.loads(options.output.read_text())
    assert len(records) == 8 and stats["kept"] == 8
    assert journal_kept(journal) == records
    recheck_records(records)

    lines = journal.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2][:10]
    journal.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data.journal.jsonl:3: broken journal line"):
        run_selfinstruct(quick_options("http://127.0.0.1:9", num=8))


def test_resuming_with_other_filter_settings_is_refused(quick_options):
    with FakeEndpoint() as fake:
        run_selfinstruct(quick_options(fake.url, num=3))
        with pytest.raises(ConfigError, match=r"threshold=0\.7, now 0\.5.*--overwrite"):
            run_selfinstruct(quick_options(fake.url, num=3, threshold=0.5))
        stats = run_selfinstruct(quick_options(fake.url, num=3, threshold=0.5, overwrite=True))
    assert stats["sessions"] == 1 and stats["kept"] == 3


def test_an_output_without_a_journal_is_not_overwritten(quick_options):
    options = quick_options("http://127.0.0.1:9")
    options.output.parent.mkdir(parents=True)
    options.output.write_text("[]")
    with pytest.raises(ConfigError, match=r"data.json exists and has no journal"):
        run_selfinstruct(options)


def test_the_command_line_runs_and_reports_bad_options(tmp_path, capsys):
    output = tmp_path / "made.json"
    with FakeEndpoint() as fake:
        code = main(["selfinstruct", "--endpoint", fake.url, "--output", str(output), "--num", "4"])
    assert code == 0
    assert f"{output}: 4 records kept of" in capsys.readouterr().out
    assert len(json.loads(output.read_text())) == 4

    code = main(["selfinstruct", "--output", "x.txt", "--num", "0", "--lang", "fr"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--num must be >= 1" in err and "--lang must be one of" in err and ".json" in err


def test_an_endpoint_that_knows_no_model_is_an_error(quick_options):
    with FakeEndpoint() as fake:
        options = quick_options(fake.url + "/v1/nothing", model=None)
        with pytest.raises(ConfigError, match="lists no model; name one with --model"):
            run_selfinstruct(options)
