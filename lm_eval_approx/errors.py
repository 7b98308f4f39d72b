"""Named errors: every user mistake ends in one of these, with the field, the value and what is accepted."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ApproxError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(ApproxError, ValueError):
    """A configuration field holds a value that is not accepted."""

    def __init__(self, field: str, value: object, accepted: str):
        self.field, self.value, self.accepted = field, value, accepted
        super().__init__(f"{field}={value!r} is not accepted: {accepted}")


class UnknownNameError(ApproxError, KeyError):
    """A strategy, task, corpus, preset or model alias that nobody registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        close = difflib.get_close_matches(name, self.known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(self.known) if self.known else "(none registered)"
        self.message = f"unknown {kind} {name!r}.{hint} Known {kind} names: {listed}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class DataNotFoundError(ApproxError, FileNotFoundError):
    """A data set or corpus could not be found locally and the hub is unreachable."""


class ModelResolutionError(ApproxError, ValueError):
    """A model name resolves to nothing loadable, or a package it needs is missing."""


class MissingDependencyError(ApproxError, ImportError):
    """An optional package is missing; the message names the pip command that fixes it."""


class StoreMismatchError(ApproxError, ValueError):
    """A feature store on disk was written for other inputs than the ones asked for now."""


class SelectionError(ApproxError, ValueError):
    """A strategy cannot select from these inputs (k out of range, zero target, NaN features...)."""


class ModelPairError(ApproxError, ValueError):
    """θ0 and θf cannot be approximated as a pair: different architecture, vocabulary or tokenizer,
    an adapter made for another base, or no difference at all on the chosen parameters."""

    def __init__(self, base: str, finetuned: str, field: str, detail: str):
        self.base, self.finetuned, self.field, self.detail = base, finetuned, field, detail
        super().__init__(f"θ0={base!r} and θf={finetuned!r} cannot be approximated: {field}: {detail}")
