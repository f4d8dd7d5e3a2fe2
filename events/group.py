"""Run group paths: ``/<type>/<name>(/<type>/<name>)*``.

The root pair is ``project/<id>`` or ``user/<id>``; the pairs below it are ``branch``, ``tag`` or
``pr``. Names are URL-path escaped (``quote(name, safe="")``) so that a branch such as
``feature/x`` stays one path element (``feature%2Fx``), as Agola's ``GenRunGroup`` does.
Runs are numbered per root group (``root_group``).
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import quote

from msgspec import Meta

from events.errors import BadRequest

__all__ = [
    "GROUP_PATTERN",
    "GROUP_PREFIX_PATTERN",
    "MAX_GROUP_LENGTH",
    "ROOT_GROUP_TYPES",
    "SUB_GROUP_TYPES",
    "Group",
    "GroupPrefix",
    "counter_root",
    "group_path",
    "is_group_prefix",
    "project_group",
    "root_group",
    "split_group",
    "user_group",
    "validate_group",
    "validate_group_prefix",
]

ROOT_GROUP_TYPES = frozenset({"project", "user"})
SUB_GROUP_TYPES = frozenset({"branch", "tag", "pr"})
MAX_GROUP_LENGTH = 1024

_CHAR = r"[^/\x00-\x1f\x7f]"  # anything but the separator and control characters
_NOT_DOT = r"[^/.\x00-\x1f\x7f]"
#: One path element: not empty, not ``.`` or ``..``, no ``/`` or control character. Written
#: without look-arounds so that JSON Schema tools (and hypothesis) read it as Python does.
_NAME = rf"(?:{_NOT_DOT}{_CHAR}*|\.{_NOT_DOT}{_CHAR}*|\.\.{_CHAR}+)"
#: The one definition of a valid group path, for creation, listing and events alike (the
#: OpenAPI document carries it as the ``pattern`` of :data:`Group`).
GROUP_PATTERN = (
    rf"^/(?:{'|'.join(sorted(ROOT_GROUP_TYPES))})/{_NAME}"
    rf"(?:/(?:{'|'.join(sorted(SUB_GROUP_TYPES))})/{_NAME})*$"
)
_GROUP = re.compile(GROUP_PATTERN)
_ROOTS = "|".join(sorted(ROOT_GROUP_TYPES))
_SUBS = "|".join(sorted(SUB_GROUP_TYPES))
#: A listing prefix: the root ``/``; a root type (``/project``: every project); a group path; a
#: group path then a sub-group type (``/project/p1/branch``: its branches); each of them but the
#: root with one trailing ``/`` or none, which mean the same. At most ``MAX_GROUP_LENGTH``
#: characters. Matching is by whole elements (:func:`is_group_prefix`).
GROUP_PREFIX_PATTERN = (
    rf"^/(?:(?:{_ROOTS})(?:/{_NAME}(?:/(?:{_SUBS})/{_NAME})*(?:/(?:{_SUBS}))?)?/?)?$"
)
_GROUP_PREFIX = re.compile(GROUP_PREFIX_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: A group path, as a field type. Only documented here (``extra_json_schema``): the check is
#: :func:`validate_group`, whose messages say what is wrong, not just which regex failed.
Group = Annotated[
    str,
    Meta(
        extra_json_schema={
            "pattern": GROUP_PATTERN,
            "maxLength": MAX_GROUP_LENGTH,
            "description": "/<project|user>/<name> then /<branch|tag|pr>/<name> pairs; names "
            "not empty, '.' or '..', without control characters (URL-path escaped)",
            "examples": ["/project/p1/branch/main"],
        }
    ),
]

#: A listing prefix, as a field type (checked by :func:`validate_group_prefix`).
GroupPrefix = Annotated[
    str,
    Meta(
        extra_json_schema={
            "pattern": GROUP_PREFIX_PATTERN,
            "maxLength": MAX_GROUP_LENGTH,
            "description": "group prefix, by whole elements: `/` (every run), a type "
            "(`/project`, `/user`), a group path (`/project/p1` and the groups below it), or a "
            "group path then a type (`/project/p1/branch`: its branches); a trailing `/` is the "
            "same as none",
            "examples": ["/project/p1", "/project", "/"],
        }
    ),
]


def escape_name(name: str) -> str:
    """One path element for ``name``; raises ``BadRequest`` for an empty name."""
    if not name:
        raise BadRequest("group names must not be empty")
    return quote(name, safe="")


def group_path(root_type: str, root_id: str, *pairs: tuple[str, str]) -> str:
    """``/<root_type>/<root_id>/<type>/<name>...`` with every name escaped, then validated."""
    parts = [root_type, escape_name(root_id)]
    for kind, name in pairs:
        parts += [kind, escape_name(name)]
    path = "/" + "/".join(parts)
    validate_group(path)
    return path


def project_group(project_id: str, *, branch: str | None = None, tag: str | None = None,
                  pr: str | None = None) -> str:  # fmt: skip
    """``/project/<id>`` plus at most one of branch, tag or pull request."""
    return group_path("project", project_id, *_ref_pairs(branch, tag, pr))


def user_group(user_id: str, *, branch: str | None = None, tag: str | None = None,
               pr: str | None = None) -> str:  # fmt: skip
    """``/user/<id>`` plus at most one of branch, tag or pull request."""
    return group_path("user", user_id, *_ref_pairs(branch, tag, pr))


def _ref_pairs(branch: str | None, tag: str | None, pr: str | None) -> list[tuple[str, str]]:
    pairs = [(k, v) for k, v in (("branch", branch), ("tag", tag), ("pr", pr)) if v is not None]
    if len(pairs) > 1:
        raise BadRequest("a group names at most one of branch, tag and pr")
    return pairs


def split_group(path: str) -> list[tuple[str, str]]:
    """The ``(type, name)`` pairs of a valid group path (names still escaped)."""
    validate_group(path)
    elems = path[1:].split("/")
    return list(zip(elems[0::2], elems[1::2], strict=True))


def validate_group(path: str) -> str:
    """``path`` if it is a valid group path (:data:`GROUP_PATTERN`, at most
    ``MAX_GROUP_LENGTH`` characters), else ``BadRequest`` with a message saying what is wrong.

    The one check of group paths: run creation (API and events) and listing prefixes use it."""
    if len(path) <= MAX_GROUP_LENGTH and _GROUP.fullmatch(path) is not None:
        return path
    raise BadRequest(_problem(path))


def _text_problem(path: str, empty: str) -> str | None:
    """What is wrong with ``path`` as text (empty, relative, too long, a control character), the
    checks group paths and listing prefixes share; ``None`` when nothing is."""
    if not path:
        return empty
    if not path.startswith("/"):
        return f"group {path[:100]!r} is not an absolute path"
    if len(path) > MAX_GROUP_LENGTH:
        return f"group of {len(path)} characters is above {MAX_GROUP_LENGTH}"
    if _CONTROL.search(path) is not None:
        return f"group {path[:100]!r} has a control character"
    return None


def _problem(path: str) -> str:
    """What is wrong with ``path``, which does not match :data:`GROUP_PATTERN`."""
    shown = repr(path[:100])
    text = _text_problem(path, "group is empty")
    if text is not None:
        return text
    elems = path[1:].split("/")
    if len(elems) % 2:
        return f"group {shown} must be /<type>/<name> pairs"
    for i, elem in enumerate(elems):
        if not elem or elem in (".", ".."):
            return f"group {shown} has an empty or relative element"
        if i % 2 == 0:
            allowed = ROOT_GROUP_TYPES if i == 0 else SUB_GROUP_TYPES
            if elem not in allowed:
                return f"group {shown}: {elem!r} is not one of {sorted(allowed)}"
    return f"group {shown} is not /<project|user>/<name>(/<branch|tag|pr>/<name>)*"


def validate_group_prefix(prefix: str) -> str:
    """``prefix`` made canonical if it is a valid listing prefix (:data:`GROUP_PREFIX_PATTERN`),
    else ``BadRequest`` saying what is wrong. Canonical: one trailing ``/`` dropped (``/`` stays
    ``/``), so ``/project/p1/`` and ``/project/p1`` list the same runs."""
    if len(prefix) <= MAX_GROUP_LENGTH and _GROUP_PREFIX.fullmatch(prefix) is not None:
        return prefix[:-1] if len(prefix) > 1 and prefix.endswith("/") else prefix
    raise BadRequest(_prefix_problem(prefix))


def _prefix_problem(prefix: str) -> str:
    """What is wrong with ``prefix``, which does not match :data:`GROUP_PREFIX_PATTERN`."""
    shown = repr(prefix[:100])
    text = _text_problem(prefix, "group is empty (want / for every run)")
    if text is not None:
        return text
    elems = prefix[1:].split("/")
    if elems[-1] == "":
        elems.pop()  # one trailing "/" is allowed
    for i, elem in enumerate(elems):
        if not elem or elem in (".", ".."):
            return f"group {shown} has an empty or relative element"
        if i % 2 == 0:
            allowed = ROOT_GROUP_TYPES if i == 0 else SUB_GROUP_TYPES
            if elem not in allowed:
                return f"group {shown}: {elem!r} is not one of {sorted(allowed)}"
    return (
        f"group {shown} is not /, /<project|user>, a group path, or a group path then "
        "/<branch|tag|pr>"
    )


def root_group(path: str) -> str:
    """The root group's name (project or user id): runs are counted per root group."""
    return split_group(path)[0][1]


def counter_root(path: str) -> str:
    """The root group ``/<project|user>/<id>`` of a valid group path: runs are numbered per it."""
    kind, name = split_group(path)[0]
    return f"/{kind}/{name}"


def is_group_prefix(prefix: str, path: str) -> bool:
    """True when ``path`` is ``prefix`` or below it (``/a/b`` never matches ``/a/bc``); ``/``
    is above every path, and a trailing ``/`` is the same as none."""
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")
