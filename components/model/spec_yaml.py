"""Bounded reading of a model spec: YAML to JSON values with the line each came from, and schema errors as problems.

PyYAML's composer gives every node its line. The reader refuses what a spec never needs and an attacker could use: a
file over ``MAX_SPEC_BYTES``, anchors and aliases (the "billion laughs" expansion), nesting deeper than
``MAX_NESTING``, several documents, non-string keys, duplicate keys (PyYAML silently keeps the last) and values JSON
has no form for (timestamps, binary, sets, NaN, inf). Numbers follow YAML 1.2 as well, so ``1e6`` is a number.
Every problem reads ``FILE:LINE: <json path>: <problem>; <fix>``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

import yaml

MAX_SPEC_BYTES = 256 * 1024
MAX_NESTING = 20
_TAG = "tag:yaml.org,2002:"
# YAML 1.2 reads 1e6 and 2.5E-3 as numbers; PyYAML's YAML 1.1 resolver needs a dot and a signed exponent.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, where it is and how to fix it."""

    file: str
    line: int
    path: str
    problem: str
    fix: str

    def __str__(self) -> str:
        """Return ``FILE:LINE: <json path>: <problem>; <fix>``."""
        return f"{self.file}:{self.line}: {self.path}: {self.problem}; {self.fix}"


class SpecError(ValueError):
    """A spec that cannot be used; ``problems`` lists each with its file and line (empty when no file is to blame)."""

    def __init__(self, message: str = "", problems: Iterable[Problem] = ()) -> None:
        self.problems = tuple(problems)
        super().__init__(message or "\n".join(str(problem) for problem in self.problems))


@dataclass(frozen=True)
class Document:
    """A spec file's JSON value, with the line of every JSON path in it."""

    file: str
    value: object
    lines: Mapping[str, int] = field(default_factory=dict)
    plain_texts: Mapping[str, str] = field(default_factory=dict)  # unquoted scalars YAML read as something other than text

    def line(self, path: str) -> int:
        """Return the line of ``path``, or of its nearest ancestor in the file (1 when none is)."""
        while path not in self.lines and path != "$":
            path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path) or "$"
        return self.lines.get(path, 1)

    def problem(self, path: str, problem: str, fix: str) -> Problem:
        """Return a problem at ``path``, located at its line."""
        return Problem(self.file, self.line(path), path, problem, fix)


class _Refused(Exception):
    """Raised inside the composer for a construct a spec may not use."""

    def __init__(self, line: int, path: str, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.line, self.path, self.problem, self.fix = line, path, problem, fix


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe composer that tracks the JSON path of each node and refuses anchors, aliases and deep nesting."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.paths = ["$"]

    def compose_node(self, parent, index):
        """Compose one node as PyYAML does, after refusing an anchor, an alias or nesting beyond ``MAX_NESTING``."""
        event = self.peek_event()
        base = self.paths[-1]
        path = base if parent is None or index is None else f"{base}[{index}]" if isinstance(index, int) else f"{base}.{index.value}"
        if event.anchor is not None:
            raise _Refused(event.start_mark.line + 1, path, f"YAML anchors and aliases (&{event.anchor}, *{event.anchor}) are not allowed",
                           "write the value out where it is used")
        if len(self.paths) > MAX_NESTING:
            raise _Refused(event.start_mark.line + 1, path, f"nested deeper than {MAX_NESTING} levels", "a ModelSpec is never that deep: flatten it")
        self.paths.append(path)
        try:
            return super().compose_node(parent, index)
        finally:
            self.paths.pop()


_SpecLoader.add_implicit_resolver(f"{_TAG}float", _EXPONENT_FLOAT, list("-+0123456789."))


def read_document(path: Path, display: str) -> Document:
    """Return the JSON value of the spec at ``path`` with its lines; raise SpecError naming ``display`` and the line."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise SpecError(problems=[Problem(display, 1, "$", f"cannot read the file ({error.strerror})", "check the path")]) from None
    if size > MAX_SPEC_BYTES:
        raise SpecError(problems=[Problem(display, 1, "$", f"the file has {size} bytes, more than the {MAX_SPEC_BYTES} a spec may have",
                                          "a ModelSpec is a few kilobytes: keep data in data.file, not in the spec")])
    with path.open("rb") as stream:
        return parse_document(stream.read(MAX_SPEC_BYTES + 1), display)


def parse_document(raw: bytes, display: str) -> Document:
    """Return the JSON value of a spec's bytes with its lines; raise SpecError naming ``display`` and the line."""
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(problems=[Problem(display, 1, "$", f"the spec has more than the {MAX_SPEC_BYTES} bytes a spec may have",
                                          "a ModelSpec is a few kilobytes: keep data in data.file, not in the spec")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise SpecError(problems=[Problem(display, line, "$", "the file is not UTF-8 text", "save it as UTF-8")]) from None
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
    except _Refused as refused:
        raise SpecError(problems=[Problem(display, refused.line, refused.path, refused.problem, refused.fix)]) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        if error.context and "single document" in error.context:
            raise SpecError(problems=[Problem(display, line, "$", "the file holds more than one YAML document",
                                              "keep one ModelSpec per file: remove the '---' line and what follows")]) from None
        what = "; ".join(part for part in (error.context, error.problem) if part)
        raise SpecError(problems=[Problem(display, line, "$", f"not valid YAML ({what})", "fix the syntax at this line")]) from None
    except yaml.YAMLError as error:
        raise SpecError(problems=[Problem(display, 1, "$", f"not valid YAML ({error})", "fix the syntax")]) from None
    finally:
        loader.dispose()
    if node is None:
        raise SpecError(problems=[Problem(display, 1, "$", "the file is empty", "write a ModelSpec: apiVersion, kind, name, type, inputs, ...")])
    if not isinstance(node, yaml.MappingNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
        raise SpecError(problems=[Problem(display, node.start_mark.line + 1, "$", f"the document is {kind}, not a mapping",
                                          "write a ModelSpec mapping: apiVersion, kind, name, type, inputs, ...")])
    lines: dict[str, int] = {}
    plain: dict[str, str] = {}
    problems: list[Problem] = []
    value = _json_value(node, "$", display, lines, plain, problems, loader)
    if problems:
        raise SpecError(problems=problems)
    return Document(display, value, MappingProxyType(lines), MappingProxyType(plain))


def _json_value(node: yaml.Node, path: str, display: str, lines: dict, plain: dict, problems: list, loader: _SpecLoader) -> object:
    """Return the JSON value of ``node``, recording lines; append a problem for each key or value JSON cannot hold."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != f"{_TAG}str":
                merge = key_node.tag == f"{_TAG}merge"
                problems.append(Problem(display, key_line, path, "merge keys (<<) are not allowed" if merge else
                                        f"the key {getattr(key_node, 'value', '?')!r} is not text", "write each field out by its name"))
                continue
            child = f"{path}.{key_node.value}"
            if key_node.value in result:
                problems.append(Problem(display, key_line, child, "this field is given twice (YAML would keep the last silently)", "keep one"))
                continue
            lines[child] = key_line
            result[key_node.value] = _json_value(value_node, child, display, lines, plain, problems, loader)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_json_value(item, f"{path}[{index}]", display, lines, plain, problems, loader) for index, item in enumerate(node.value)]
    tag = node.tag.removeprefix(_TAG)
    if tag == "str":
        return node.value
    if node.style is None:
        plain[path] = node.value
    if tag == "null":
        return None
    if tag == "bool":
        return loader.construct_yaml_bool(node)
    if tag == "int":
        return loader.construct_yaml_int(node)
    if tag == "float":
        number = loader.construct_yaml_float(node)
        if math.isfinite(number):
            return number
        problems.append(Problem(display, lines[path], path, f"{node.value} is not a finite number", "JSON has no NaN or infinity: write a number"))
        return None
    problems.append(Problem(display, lines[path], path, f"YAML reads {node.value!r} as a {tag}, which JSON cannot hold",
                            "quote it if it is text"))
    return None


@cache
def _validator(schema_file: Path):
    """Return a Draft 2020-12 validator of the JSON Schema in ``schema_file``."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(schema_file.read_text()))


def schema_problems(document: Document, schema_file: Path) -> list[Problem]:
    """Return every place where ``document`` breaks the JSON Schema in ``schema_file``, in file order."""
    problems: dict[str, Problem] = {}
    for error in _validator(schema_file).iter_errors(document.value):
        for problem in _rendered(error, document, schema_file.name):
            problems.setdefault(str(problem), problem)
    return sorted(problems.values(), key=lambda problem: (problem.line, problem.path))


def _json_path(parts: Iterable[object]) -> str:
    """Return the JSON path of a jsonschema error's location, ``$.inputs[0].unit``."""
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts)


def _short(value: object) -> str:
    """Return ``value`` as JSON, cut to 60 characters."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


_JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "text", list: "a list", dict: "a mapping", type(None): "null"}


def _rendered(error, document: Document, schema_name: str) -> list[Problem]:
    """Return the problems one jsonschema error stands for, with a fix drawn from the schema's descriptions."""
    path = _json_path(error.absolute_path)
    if "propertyNames" in error.relative_schema_path:  # the error is about a key: point at it, not at its mapping
        path = f"{path}.{error.instance}"
    schema = error.schema if isinstance(error.schema, dict) else {}
    expected = f"expected: {schema['description']}" if schema.get("description") else f"see {schema_name}"
    keyword, wanted, instance = error.validator, error.validator_value, error.instance
    if keyword == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        return [document.problem(f"{path}.{name}", "unknown field", f"remove it or correct its spelling; the fields here are {', '.join(known)}")
                for name in instance if name not in schema.get("properties", {})]
    if keyword == "required":
        properties = schema.get("properties", {})
        return [document.problem(path, f"the field {name!r} is missing",
                                 f"add {name}" + (f": {properties[name]['description']}" if properties.get(name, {}).get("description") else ""))
                for name in wanted if isinstance(instance, dict) and name not in instance]
    if keyword == "enum":
        return [document.problem(path, f"{_short(instance)} is not allowed", f"use one of {', '.join(map(str, wanted))}")]
    if keyword == "const":
        return [document.problem(path, f"{_short(instance)} is not {wanted!r}", f"write {wanted}")]
    if keyword == "type":
        found = _JSON_TYPES.get(type(instance), type(instance).__name__)
        read_as = f" (YAML reads the unquoted {document.plain_texts[path]!r} as {found})" if path in document.plain_texts else ""
        fix = "quote it" if read_as and wanted == "string" else f"write {'text' if wanted == 'string' else f'a {wanted}'}"
        return [document.problem(path, f"{_short(instance)} is {found}, not {wanted}{read_as}",
                                 fix + (f" ({schema['description']})" if schema.get("description") else ""))]
    if keyword in ("minItems", "maxItems"):
        return [document.problem(path, f"has {len(instance)} item(s), {'at least' if keyword == 'minItems' else 'at most'} {wanted} are allowed",
                                 expected)]
    if keyword == "pattern":
        return [document.problem(path, f"{_short(instance)} is not in the allowed form", expected)]
    return [document.problem(path, error.message if len(error.message) <= 120 else error.message[:117] + "...", expected)]
