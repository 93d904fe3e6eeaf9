"""Documentation generated from the code: `--help-config` (every config key with its type,
default and reason) and the table of what each algorithm resolves to (spec_table).

The reasons are the attribute docstrings written under each field in config.py (the one
place they live); they are read from its source with ast rather than copied here.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing

from . import config as config_module
from .algorithms import ALGORITHM_NAMES, AlgorithmSpec, resolve_algorithm
from .config import Config, _describe


def field_docs() -> dict[str, dict[str, str]]:
    """{class name: {field name: its docstring}} for every dataclass in config.py."""
    tree = ast.parse(inspect.getsource(config_module))
    docs: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = docs.setdefault(node.name, {})
        for stmt, nxt in zip(node.body, node.body[1:] + [None]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                fields[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def config_fields(obj=None, prefix: str = "") -> list[tuple[str, str, object, str]]:
    """[(dotted key, type, default, doc)] in declaration order, sections expanded."""
    obj = obj if obj is not None else Config()
    docs = field_docs().get(type(obj).__name__, {})
    hints = typing.get_type_hints(type(obj))
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += config_fields(value, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", _describe(hints[f.name]), value, docs.get(f.name, "")))
    return out


def format_config_help(width: int = 100) -> str:
    lines = ["Config keys (set with key=value, a --config YAML file or a preset); default in brackets.", ""]
    section = None
    for key, type_text, default, doc in config_fields():
        head = key.split(".")[0] if "." in key else ""
        if head != section:
            section = head
            lines.append(f"{head or 'top level'}:")
        lines.append(f"  {key} [{default!r}]  ({type_text})")
        if doc:
            lines += textwrap.wrap(doc, width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def spec_table() -> str:
    """The Markdown table of what each algorithm resolves to at the config's defaults
    (docs/ALGORITHM.md section 6 holds it verbatim; a test keeps the two equal)."""
    specs = {name: resolve_algorithm(Config(algorithm=name)) for name in ALGORITHM_NAMES}
    rows = ["| `AlgorithmSpec` field | " + " | ".join(f"`{name}`" for name in specs) + " |",
            "| --- |" + " --- |" * len(specs)]
    for f in dataclasses.fields(AlgorithmSpec):
        if f.name != "name":
            rows.append(f"| {f.name} | " + " | ".join(f"{getattr(spec, f.name)}" for spec in specs.values()) + " |")
    return "\n".join(rows)
