"""Shared checks of config values, and dataclass fields that carry their own CLI help.

Every config (FeatureConfig, ApproxConfig, TrainingRecipe, strategy options, the leaderboard file,
selection rows) checks its values with the ``check_*`` functions here, so one rule says what "an
integer ≥ 1" means — ``True`` and ``2.0`` are not integers, ``nan`` and ``inf`` are not numbers —
and every rejection is a named error carrying the field, the value and what is accepted. Each check
returns the value it accepted. ``error`` builds the exception as ``error(field, value, accepted)``:
ConfigError by default, a subclass such as the leaderboard's, or any callable that returns an
exception (a message-based error such as SelectionFileError).

``help_field`` writes a field's help text (and the CLI choices, where the CLI offers them) into
its metadata once; ``add_field_arguments`` turns such fields into argparse flags, so the flags of
``features`` and of the training recipe take help, default, type and choices from the fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from typing import Any

from lm_eval_approx.errors import ConfigError

ErrorFactory = Callable[[str, Any, str], Exception]

# The fewest tokens per example that any config accepts (FeatureConfig.max_length,
# ApproxConfig.extract_max_length, TrainingRecipe.max_length): one context or BOS token plus one
# loss token, the floor of the encoding rule (features/encoding.py). Whether a task's verbaliser
# fits is checked where the example is encoded, with a named error.
MIN_MAX_LENGTH = 2
# Field types whose flags argparse converts; every other field's flag keeps the string.
FLAG_TYPES: dict[object, type] = {"int": int, "int | None": int, "float": float, "float | None": float}


def help_field(text: str, default: Any, choices: Iterable[str] | None = None):
    """A dataclass field whose ``metadata["help"]`` documents it (CLI help and the docs'
    configuration reference come from it); ``choices`` become the argparse choices of its flag."""
    metadata: dict[str, Any] = {"help": text}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


def is_int(value: object, kinds: type | tuple[type, ...] = int) -> bool:
    """True for an instance of ``kinds`` that is not a bool (bool subclasses int but counts nothing).
    Configs take plain ints only (their values are hashed as JSON); callers that index arrays pass
    ``(int, np.integer)`` or ``numbers.Integral``."""
    return isinstance(value, kinds) and not isinstance(value, bool)


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in {minimum}..{maximum}"
    if minimum is not None:
        return f"an integer ≥ {minimum}"
    return "an integer" if maximum is None else f"an integer ≤ {maximum}"


def check_int(field: str, value: Any, minimum: int | None = None, maximum: int | None = None, *,
              optional: bool = False, accepted: str | None = None, error: ErrorFactory = ConfigError):
    """``value`` when it is an int (not a bool) in [minimum, maximum] (None when ``optional``)."""
    if value is None and optional:
        return None
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise error(field, value, accepted or _int_range(minimum, maximum) + (" or None" if optional else ""))
    return value


def check_number(field: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False, optional: bool = False,
                 accepted: str | None = None, error: ErrorFactory = ConfigError):
    """``value`` when it is a finite int or float (not a bool) in the interval from ``low`` to
    ``high``, each end closed unless ``low_open`` / ``high_open`` (None when ``optional``)."""
    if value is None and optional:
        return None
    ok = is_int(value) or (isinstance(value, float) and math.isfinite(value))
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise error(field, value, accepted or f"a finite number in {interval}" + (" or None" if optional else ""))
    return value


def check_choice(field: str, value: Any, choices: Iterable[str], *, accepted: str | None = None,
                 error: ErrorFactory = ConfigError):
    """``value`` when it is one of ``choices``."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise error(field, value, accepted or f"one of {', '.join(choices)}")
    return value


def check_text(field: str, value: Any, accepted: str = "a non-empty string", *,
               error: ErrorFactory = ConfigError) -> str:
    """``value`` when it is a string with something other than whitespace in it."""
    if not isinstance(value, str) or not value.strip():
        raise error(field, value, accepted)
    return value


def parse_json(field: str, text: str) -> Any:
    """``text`` as JSON, or a ConfigError naming ``field``, the text's start and the parser's reason."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(field, text[:80], f"valid JSON ({exc.msg})") from None


def field_default(f: dataclasses.Field) -> Any:
    """The default value of a dataclass field (its factory called), or None when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    return None if f.default_factory is dataclasses.MISSING else f.default_factory()


def add_field_arguments(parser, cls, names: Iterable[str] | None = None, *, flags: dict[str, str] | None = None,
                        required: Iterable[str] = (), dest_prefix: str = "", as_strings: bool = False) -> None:
    """One ``--flag`` per field of the dataclass ``cls`` (``batch_size`` → ``--batch-size``, or
    ``flags[name]``), stored in ``dest_prefix + name``, with the field's help (plus its default
    unless ``required``) and choices. Typed flags take the field's default and convert int/float
    fields; ``as_strings`` flags default to None and keep the string, for callers that merge given
    values over a base and convert them with their own named errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    flags, required = flags or {}, set(required)
    for name in names or fields:
        f = fields[name]
        flag = flags.get(name, "--" + name.replace("_", "-"))
        default = field_default(f)
        shown = ",".join(default) if isinstance(default, tuple) else default
        text = f.metadata["help"].replace("%", "%%")
        options: dict[str, Any] = {"dest": dest_prefix + name, "help": text if name in required
                                   else f"{text} (default: {shown})"}
        if "choices" in f.metadata and not as_strings:
            options["choices"] = f.metadata["choices"]
        else:
            options["metavar"] = flag.lstrip("-").replace("-", "_").upper()
        if name in required:
            options["required"] = True
        elif not as_strings:
            options["default"] = default
        if not as_strings and FLAG_TYPES.get(f.type) is not None:
            options["type"] = FLAG_TYPES[f.type]
        parser.add_argument(flag, **options)


def field_values(args: argparse.Namespace, cls, names: Iterable[str] | None = None,
                 dest_prefix: str = "") -> dict[str, Any]:
    """The values of ``add_field_arguments`` flags, by field name: a flag not given holds its
    default (the field's for typed flags, None for ``as_strings`` ones), a flag never added None."""
    return {name: getattr(args, dest_prefix + name, None)
            for name in names or [f.name for f in dataclasses.fields(cls)]}
