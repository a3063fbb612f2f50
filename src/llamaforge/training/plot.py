"""loss.png from trainer_log.jsonl (train loss and eval loss against the step)."""

from __future__ import annotations

from pathlib import Path

from llamaforge.rundir import PLOT_NAME, read_log


def plot_losses(run_dir: Path) -> Path | None:
    """Redraw the loss plot; returns its path, or None when nothing was logged yet."""
    records = read_log(run_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(run_dir) / PLOT_NAME
    tmp = path.with_name(f".{PLOT_NAME}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)  # atomic: the web UI may be reading it
    return path
