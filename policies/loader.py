"""Load policy documents from YAML with errors that name the file, the line and the field."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from policies.model import ResidencyPolicy

DEFAULT_POLICY_NAME = "kr-default"
Location = tuple[str | int, ...]


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy document, located as precisely as the YAML allows."""

    source: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PolicyError(ValueError):
    """A policy document that cannot be used; `problems` lists every reason found."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


def load_policy(path: str | Path) -> ResidencyPolicy:
    """Read and validate a policy document from a YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([PolicyProblem(str(path), None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError([PolicyProblem(str(path), None, "", f"cannot read the file: {error}")]) from None
    return parse_policy(text, source=str(path))


def load_default_policy() -> ResidencyPolicy:
    """The Korean default policy shipped in the package."""
    return load_policy(default_policy_path())


def default_policy_path() -> Path:
    return Path(str(resources.files("policies") / "data" / f"{DEFAULT_POLICY_NAME}.yaml"))


def parse_policy(text: str, source: str = "<policy>") -> ResidencyPolicy:
    """Validate a policy document given as YAML text; `source` names it in errors."""
    data, lines = _parse_yaml(text, source)
    if not isinstance(data, dict):
        raise PolicyError([PolicyProblem(source, 1, "", "expected a mapping with apiVersion, kind, metadata and spec")])
    try:
        return ResidencyPolicy.model_validate(data)
    except ValidationError as error:
        problems = [_problem_from(detail, source, lines) for detail in error.errors(include_url=False)]
        raise PolicyError(sorted(problems, key=lambda problem: problem.line or 0)) from None


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[Location, int]]:
    """Build plain data from YAML, recording the line of every key and item."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark else None
        reason = getattr(error, "problem", None) or str(error)
        column = f" (column {mark.column + 1})" if mark else ""
        raise PolicyError([PolicyProblem(source, line, "", f"invalid YAML{column}: {reason}")]) from None
    if node is None:
        raise PolicyError([PolicyProblem(source, 1, "", "the document is empty")])
    lines: dict[Location, int] = {}
    problems: list[PolicyProblem] = []
    data = _construct(node, (), _Context(yaml.constructor.SafeConstructor(), source, lines, problems))
    if problems:
        raise PolicyError(problems)
    return data, lines


@dataclass
class _Context:
    constructor: yaml.constructor.SafeConstructor
    source: str
    lines: dict[Location, int]
    problems: list[PolicyProblem]


def _construct(node: yaml.Node, location: Location, context: _Context) -> Any:
    context.lines[location] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = context.constructor.construct_object(key_node)
            key_line = key_node.start_mark.line + 1
            if not isinstance(key, str | int | float | bool):
                context.problems.append(
                    PolicyProblem(context.source, key_line, _dotted(location), "mapping keys must be plain scalars")
                )
                continue
            if key in mapping:
                context.problems.append(
                    PolicyProblem(context.source, key_line, _dotted((*location, key)), "duplicate key")
                )
                continue
            mapping[key] = _construct(value_node, (*location, key), context)
            context.lines[(*location, key)] = key_line
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*location, index), context) for index, item in enumerate(node.value)]
    return context.constructor.construct_object(node)


def _problem_from(detail: ErrorDetails, source: str, lines: dict[Location, int]) -> PolicyProblem:
    location = _data_location(detail, lines)
    line = _nearest_line(location, lines)
    unknown_field = detail["type"] == "extra_forbidden"
    message = _unknown_field_message(location) if unknown_field else _describe(detail)
    return PolicyProblem(source, line, _dotted(location), message)


def _data_location(detail: ErrorDetails, lines: dict[Location, int]) -> Location:
    """The error's location in the document, without the union-member tags pydantic inserts."""
    location: Location = ()
    parts = detail["loc"]
    for index, part in enumerate(parts):
        candidate = (*location, part)
        # A missing field is absent from the document by definition, so its name cannot be looked up.
        if candidate in lines or (detail["type"] == "missing" and index == len(parts) - 1):
            location = candidate
    return location


def _describe(detail: ErrorDetails) -> str:
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "missing":
        return "required field is missing"
    given = detail.get("input")
    if isinstance(given, dict | list):
        return message
    return f"{message} (got {given!r})"


def _unknown_field_message(location: Location) -> str:
    unknown = str(location[-1])
    model = _model_at(location[:-1])
    if model is None:
        return f"unknown field `{unknown}`"
    names = [field.alias or name for name, field in model.model_fields.items()]
    matches = difflib.get_close_matches(unknown, names, n=1)
    hint = f"did you mean `{matches[0]}`? " if matches else ""
    return f"unknown field `{unknown}`; {hint}expected one of: {', '.join(names)}"


def _model_at(location: Location) -> type[BaseModel] | None:
    """The model of the mapping a validation location points into, following lists and dicts."""
    model: type[BaseModel] = ResidencyPolicy
    next_is_dict_key = False
    for part in location:
        if isinstance(part, int) or next_is_dict_key:
            next_is_dict_key = False
            continue
        field = {info.alias or name: info for name, info in model.model_fields.items()}.get(part)
        if field is None:
            return None
        next_is_dict_key = get_origin(field.annotation) is dict
        inner = _model_in(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation is, or holds as list item or dict value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        if isinstance(argument, type) and issubclass(argument, BaseModel):
            return argument
    return None


def _nearest_line(location: Location, lines: dict[Location, int]) -> int | None:
    """The line of the location, or of its closest enclosing key when it is absent (a missing field)."""
    for end in range(len(location), -1, -1):
        if location[:end] in lines:
            return lines[location[:end]]
    return None


def _dotted(location: Location) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
