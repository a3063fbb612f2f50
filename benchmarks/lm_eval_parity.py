"""Cross-check against lm-evaluation-harness: its own CMMLU task (prompt, few-shot sampler,
metrics read from the installed package's task files), pointed at the same local CSV
files and the same weights, on the very questions a llamaforge results file holds.

lm-eval is not a dependency; install it in a scratch environment that sees ours:

    python -m venv --system-site-packages /tmp/lmeval-venv
    /tmp/lmeval-venv/bin/pip install lm-eval==0.4.13
    /tmp/lmeval-venv/bin/python benchmarks/lm_eval_parity.py RESULTS.json [--suite DIR]

RESULTS.json is what `llamaforge eval --output` (or benchmarks/eval_cmmlu.py --output)
wrote; its subjects, split, shots and question counts choose what lm-eval runs (the first N
questions of each subject, as its --limit does). The CSVs are read with the csv module, every
field a string (no pandas type guessing), into the datasets lm-eval's task expects. Prints
both accuracies, the difference in points, the questions whose letter differs and the largest
log-likelihood difference; the last line is JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from llamaforge.models import cached_gguf_dir, resolve_model

ROOT = Path(__file__).resolve().parents[1]
CMMLU = ROOT.parent / "shared" / "data" / "cmmlu"


def read_csv_split(path: Path) -> Any:
    import datasets

    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    header = [name or f"Unnamed: {i}" for i, name in enumerate(rows[0])]
    return datasets.Dataset.from_dict({h: [r[i] for r in rows[1:]] for i, h in enumerate(header)})


def task_config(subject: str, suite: Path, split: str) -> dict[str, Any]:
    """lm-eval's cmmlu_{subject} config, its dataset replaced by the local files."""
    import datasets
    import lm_eval

    tasks = Path(lm_eval.__file__).parent / "tasks" / "cmmlu"
    config = yaml.safe_load((tasks / "_default_template_yaml").read_text(encoding="utf-8"))
    own = yaml.safe_load((tasks / f"cmmlu_{subject}.yaml").read_text(encoding="utf-8"))
    config.update({k: v for k, v in own.items() if k != "include"})
    config.pop("dataset_path", None)
    config.pop("dataset_name", None)
    config["test_split"] = split

    def load(**_: Any) -> Any:
        return datasets.DatasetDict(
            {
                split: read_csv_split(suite / split / f"{subject}.csv"),
                "dev": read_csv_split(suite / "dev" / f"{subject}.csv"),
            }
        )

    config["custom_dataset"] = load
    config["task"] = f"local_cmmlu_{subject}"
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a llamaforge results.json (multiple_choice)")
    parser.add_argument("--suite", default=str(CMMLU))
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    from lm_eval import simple_evaluate
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM

    ours = json.loads(Path(args.results).read_text(encoding="utf-8"))
    suite = Path(args.suite)
    resolved = resolve_model(ours["model"]["model"])
    if resolved.gguf_path is None or ours["model"]["adapter"]:
        raise SystemExit("this check runs a GGUF base model (smollm2-135m), no adapter")
    weights = cached_gguf_dir(resolved.gguf_path)  # the HF folder llamaforge loads
    lm = HFLM(pretrained=str(weights), dtype="float32", batch_size=args.batch_size, device="cpu")
    counts = {name: int(m["questions"]) for name, m in ours["subjects"].items()}
    started = time.perf_counter()
    theirs: dict[str, list[list[float]]] = {}
    # One subject at a time: lm-eval's limit is one number for all tasks of a call.
    for subject, count in counts.items():
        task = ConfigurableTask(config=task_config(subject, suite, ours["split"]))
        out = simple_evaluate(
            model=lm, tasks=[task], num_fewshot=ours["shots"], limit=count, log_samples=True
        )
        samples = sorted(out["samples"][f"local_cmmlu_{subject}"], key=lambda s: s["doc_id"])
        theirs[subject] = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    seconds = time.perf_counter() - started
    letters = "ABCD"
    seen: dict[str, int] = {}
    differ, worst, correct_ours, correct_theirs = [], 0.0, 0, 0
    for q in ours["questions"]:
        n = seen.get(q["subject"], 0)
        seen[q["subject"]] = n + 1
        lls = theirs[q["subject"]][n]
        pred = letters[lls.index(max(lls))]
        worst = max(worst, *(abs(a - b) for a, b in zip(lls, q["loglikelihoods"], strict=True)))
        correct_ours += q["pred"] == q["gold"]
        correct_theirs += pred == q["gold"]
        if pred != q["pred"]:
            differ.append(f"{q['subject']}/{q['id']}")
    total = len(ours["questions"])
    figures = {
        "questions": total,
        "shots": ours["shots"],
        "acc_llamaforge": round(100 * correct_ours / total, 3),
        "acc_lm_eval": round(100 * correct_theirs / total, 3),
        "difference_points": round(100 * (correct_ours - correct_theirs) / total, 3),
        "letters_differ": len(differ),
        "differing": differ[:20],
        "max_abs_ll_diff": worst,
        "lm_eval_seconds": round(seconds, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
