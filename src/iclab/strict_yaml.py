"""The YAML dialect of iclab's configuration files and ``--set`` values.

PyYAML speaks YAML 1.1, whose implicit types surprise: ``yes``/``no``/``on``/``off`` are booleans,
``010`` is octal 8 and ``1:30`` is the sexagesimal 90. iclab's loader resolves plain scalars by the
YAML 1.2 core schema instead: booleans are ``true``/``false`` only, integers are decimal (``010``
is 10) or ``0o``/``0x``-prefixed, floats need a digit and a dot or an exponent (``1e-3``), and
anything else is a string (which a numeric field then rejects). Duplicate keys are an error, and
so are anchors and aliases (``&a``, ``*a``): a config never needs them, and nested aliases can
expand a few hundred bytes into gigabytes.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class YAMLError(ValueError):
    """A configuration text that iclab refuses; the message says where and why."""


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in [
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
]:
    _Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first))


def _construct_int(loader: _Loader, node: yaml.Node) -> int:
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if body.startswith("0o"):
        return sign * int(body[2:], 8)
    if body.startswith("0x"):
        return sign * int(body[2:], 16)
    return sign * int(body, 10)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise YAMLError(f"duplicate key {key!r} (lines {seen[key]} and {line})")
        seen[key] = line
    return dict(loader.construct_pairs(node, deep=deep))


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def load(text: str, where: str = "config") -> Any:
    """Parse configuration text; :class:`YAMLError` names ``where`` and the problem."""
    try:
        for token in yaml.scan(text, Loader=_Loader):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                line = token.start_mark.line + 1
                raise YAMLError(
                    f"{where}: YAML anchors and aliases (&name, *name) are not allowed "
                    f"(line {line})"
                )
        return yaml.load(text, Loader=_Loader)
    except YAMLError as err:
        msg = str(err)
        raise YAMLError(msg if msg.startswith(f"{where}:") else f"{where}: {msg}") from None
    except RecursionError:
        raise YAMLError(f"{where}: nested too deeply to be a configuration") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise YAMLError(f"{where}: not valid YAML: {problem}{at}") from None
