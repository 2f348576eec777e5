"""Per-class parsers and encoders for wire messages, generated once at import.

Like :mod:`dataclasses`, this writes a small function per class: it reads each field, accepts
common values on an inline fast path, and falls back to the field's check object, which either
accepts the value or raises :class:`~tidegate.protocol.schema.FieldMismatch` with the words for
what it expected. Construction bypasses the frozen ``__init__`` (same result, a third of the
cost): the hot path of every event is here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .schema import INT64_MAX, INT64_MIN, MISSING, NUL, Check, FieldMismatch, Number, Text


def _fast_path(check: Check, var: str, ns: dict[str, Any], key: str) -> str | None:
    """An expression that is True when ``var`` certainly passes ``check`` unchanged."""
    if isinstance(check, Text) and check.choices is None:
        hi = check.max_chars
        ns[f"{key}_hi"] = hi
        cond = f"type({var}) is str and {check.min_chars} <= len({var}) <= smax"
        cond += f" and NUL not in {var}"
        return cond + (f" and len({var}) <= {key}_hi" if hi is not None else "")
    if isinstance(check, Text):
        ns[f"{key}_choices"] = check.choices
        return f"type({var}) is str and {var} in {key}_choices"
    if isinstance(check, Number):
        ns[f"{key}_lo"], ns[f"{key}_hi"] = check.low, check.high
        if check.integer:  # its range lies within int64
            return f"type({var}) is int and {key}_lo <= {var} <= {key}_hi"
        # an int outside int64 takes the slow path, which turns it into a float
        kinds = f"(type({var}) is float or (type({var}) is int and I64_LO <= {var} <= I64_HI))"
        return f"{kinds} and {key}_lo <= {var} <= {key}_hi"
    return None


def compile_parser(
    cls: type,
    plan: tuple[Any, ...],
    envelope: tuple[tuple[str, Check | None, bool], ...],
) -> Callable[[dict[Any, Any], Any], Any]:
    """Build ``parse(data, limits) -> instance`` for ``cls``.

    ``plan`` holds the message's own fields; ``envelope`` holds (name, check, required) for the
    envelope fields the caller has already validated or wants validated here (seq, t).
    """
    ns: dict[str, Any] = {
        "FieldMismatch": FieldMismatch,
        "MISSING": MISSING,
        "_new": object.__new__,
        "_set": object.__setattr__,
        "cls": cls,
        "NUL": NUL,
        "I64_LO": INT64_MIN,
        "I64_HI": INT64_MAX,
    }
    lines = ["def parse(data, limits):", "    smax = limits.max_string_chars", "    get = data.get"]
    lines.append("    cur = ''")
    lines.append("    try:")
    names: list[str] = []
    for i, (name, check, required) in enumerate(
        [*envelope, *((p.name, p.check, p.required) for p in plan)]
    ):
        var = f"f{i}"
        names.append(name)
        key = f"c{i}"
        lines.append(f"        cur = {name!r}")
        lines.append(f"        {var} = get({name!r})")
        if check is None:  # validated by the caller
            continue
        ns[key] = check
        if required:
            lines.append(f"        if {var} is None: raise FieldMismatch({key}.expected, MISSING)")
            guard = ""
        else:
            guard = f"{var} is not None and "
        fast = _fast_path(check, var, ns, key)
        if fast is None:
            lines.append(f"        if {guard}True: {var} = {key}({var}, limits)")
        else:
            lines.append(f"        if {guard}not ({fast}): {var} = {key}({var}, limits)")
    lines.append("    except FieldMismatch as e:")
    lines.append("        e.path = cur + '.' + e.path if e.path else cur")
    lines.append("        raise")
    lines.append("    obj = _new(cls)")
    for i, name in enumerate(names):
        lines.append(f"    _set(obj, {name!r}, f{i})")
    lines.append("    return obj")
    exec("\n".join(lines), ns)
    return ns["parse"]


def compile_encoder(
    plan: tuple[Any, ...], head: tuple[str, ...], optional_attrs: tuple[str, ...] = ()
) -> Callable[..., dict[str, Any]]:
    """Build ``encode(msg, *head_values) -> dict``: ``head`` keys first (values given as
    arguments), then ``optional_attrs`` of the message when not None, then its fields.

    Fields that are None are left out; nested records and tuples are converted.
    """
    ns: dict[str, Any] = {}
    args = ", ".join(head)
    lines = [f"def encode(self{', ' + args if args else ''}):"]
    lines.append("    out = {" + ", ".join(f"{h!r}: {h}" for h in head) + "}")
    for a in optional_attrs:
        lines.append(f"    if self.{a} is not None: out[{a!r}] = self.{a}")
    for p in plan:
        lines.append(f"    v = self.{p.name}")
        if p.nested is not None:
            conv = "v.to_map()"
        elif p.is_tuple:
            conv = "[x.to_map() for x in v]" if p.tuple_of_records else "list(v)"
        else:
            conv = "v"
        if p.required:
            lines.append(f"    out[{p.name!r}] = {conv}")
        else:
            lines.append(f"    if v is not None: out[{p.name!r}] = {conv}")
    lines.append("    return out")
    exec("\n".join(lines), ns)
    return ns["encode"]
