"""Run group paths: ``/<type>/<name>(/<type>/<name>)*``.

The root pair is ``project/<id>`` or ``user/<id>``; the pairs below it are ``branch``, ``tag`` or
``pr``. Names are URL-path escaped (``quote(name, safe="")``) so that a branch such as
``feature/x`` stays one path element (``feature%2Fx``), as Agola's ``GenRunGroup`` does.
Runs are numbered per root group (``root_group``).
"""

from __future__ import annotations

from urllib.parse import quote

from events.errors import BadRequest

__all__ = [
    "ROOT_GROUP_TYPES",
    "SUB_GROUP_TYPES",
    "group_path",
    "is_group_prefix",
    "project_group",
    "root_group",
    "split_group",
    "user_group",
    "validate_group",
]

ROOT_GROUP_TYPES = frozenset({"project", "user"})
SUB_GROUP_TYPES = frozenset({"branch", "tag", "pr"})


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


def validate_group(path: str) -> None:
    """Raise ``BadRequest`` with a message saying what is wrong unless ``path`` is a valid group."""
    if not path:
        raise BadRequest("group is empty")
    if not path.startswith("/"):
        raise BadRequest(f"group {path!r} is not an absolute path")
    elems = path[1:].split("/")
    if len(elems) % 2:
        raise BadRequest(f"group {path!r} must be /<type>/<name> pairs")
    for i, elem in enumerate(elems):
        if not elem or elem in (".", ".."):
            raise BadRequest(f"group {path!r} has an empty or relative element")
        if i % 2 == 0:
            allowed = ROOT_GROUP_TYPES if i == 0 else SUB_GROUP_TYPES
            if elem not in allowed:
                raise BadRequest(f"group {path!r}: {elem!r} is not one of {sorted(allowed)}")


def root_group(path: str) -> str:
    """The root group's name (project or user id): runs are counted per root group."""
    return split_group(path)[0][1]


def is_group_prefix(prefix: str, path: str) -> bool:
    """True when ``path`` is ``prefix`` or below it (``/a/b`` never matches ``/a/bc``)."""
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")
