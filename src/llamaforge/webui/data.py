"""The Data tab: the dataset preview as HTML, trained tokens highlighted.

Contract: :func:`preview_html` runs :func:`llamaforge.data.preview.preview_dataset` (same
validation, same report as ``llamaforge data preview``) and returns escaped HTML in which
the tokens that carry labels are wrapped in ``<mark class="trained">``. User errors
(missing file, bad records, unknown template) propagate as LlamaforgeError.
"""

from __future__ import annotations

import html
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llamaforge.config import RunConfig

# preview_dataset(color=True) wraps trained runs in these ANSI codes.
_GREEN, _RESET = "\033[32m", "\033[0m"

_tokenizers: dict[str, Any] = {}
_lock = threading.Lock()


def tokenizer_for(spec: str, trust_remote_code: bool = False) -> Any:
    """Tokenizers are cached per model spec: loading one from a GGUF takes seconds."""
    from llamaforge.models import load_tokenizer

    with _lock:
        if spec not in _tokenizers:
            _tokenizers[spec] = load_tokenizer(spec, trust_remote_code=trust_remote_code)
        return _tokenizers[spec]


def report_to_html(report: str) -> str:
    """A colored preview report → HTML (escaped; trained runs marked)."""
    text = html.escape(report)
    text = text.replace(_GREEN, '<mark class="trained">').replace(_RESET, "</mark>")
    return f'<pre class="llamaforge-preview">{text}</pre>'


def preview_html(cfg: RunConfig, num_examples: int = 3) -> str:
    from llamaforge.data.preview import preview_dataset

    tokenizer = tokenizer_for(cfg.model.model, cfg.model.trust_remote_code)
    report = preview_dataset(cfg, num_examples=num_examples, tokenizer=tokenizer, color=True)
    return report_to_html(report)
