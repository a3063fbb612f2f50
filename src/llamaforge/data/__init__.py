"""Datasets: files → canonical records → templates → token ids with label masks.

``read_records`` reads one file (format detected or given), ``load_dataset_records``
resolves ``DataConfig.dataset`` (paths or registry names) and mixes them,
``tokenize_records`` turns records into training examples, ``render_prompt`` /
``encode_prompt`` build generation prompts exactly as training saw them.
"""

from llamaforge.data.formats import (
    FORMATS,
    Conversation,
    Message,
    Preference,
    Record,
    TextDocument,
    detect_format,
    read_file,
    read_records,
)
from llamaforge.data.preview import preview_dataset
from llamaforge.data.registry import load_dataset_records, resolve_dataset, split_validation
from llamaforge.data.templates import (
    TEMPLATES,
    ChatTemplate,
    PromptTemplate,
    Segment,
    Template,
    get_template,
    render_prompt,
    render_segments,
    stop_strings_for,
)
from llamaforge.data.tokenization import (
    IGNORE_INDEX,
    encode_prompt,
    render_preference,
    tokenize_conversation,
    tokenize_records,
    tokenize_text,
)

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "TEMPLATES",
    "ChatTemplate",
    "Conversation",
    "Message",
    "Preference",
    "PromptTemplate",
    "Record",
    "Segment",
    "Template",
    "TextDocument",
    "detect_format",
    "encode_prompt",
    "get_template",
    "load_dataset_records",
    "preview_dataset",
    "read_file",
    "read_records",
    "render_preference",
    "render_prompt",
    "render_segments",
    "resolve_dataset",
    "split_validation",
    "stop_strings_for",
    "tokenize_conversation",
    "tokenize_records",
    "tokenize_text",
]
