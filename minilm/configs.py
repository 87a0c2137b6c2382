"""Config dataclasses checked against their own annotations.

A config read back from JSON (a checkpoint's meta.json, an adapter_config.json) can be
parseable and still wrong: ``"n_embd": "32"`` or ``"n_layer": 2.0`` would fail much later,
deep inside a layer, with a message about something else.  ``check_fields(config)``, called
by every config's ``__post_init__``, compares each field's value with the field's annotation
and names the field, the value and the type it should have:

    int     an int (not a bool; 2.0 is refused: a layer count has no fraction)
    float   an int or a float (not a bool); ints become floats
    bool    True or False
    str     a str
    list, tuple   a list or a tuple (``tuple`` fields also take one str: one pattern)
    dict    a dict
    X | None      None or an X

``config_from_dict(cls, d, source)`` builds ``cls`` from a dict, refusing non-dicts and unknown
fields, and puts ``source`` (the file it came from) in front of any error.  Nothing here
imports from minilm: every layer may use it.
"""
from __future__ import annotations

import dataclasses
import numbers

_CHECKS = {
    "int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "list": lambda v: isinstance(v, (list, tuple)),
    "tuple": lambda v: isinstance(v, (list, tuple, str)),
    "dict": lambda v: isinstance(v, dict),
    "None": lambda v: v is None,
}
_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
          "list": "a list", "tuple": "a list", "dict": "a dict", "None": "null"}


class ConfigError(ValueError):
    """A config field of the wrong type or range; the message names the config, the field and the source."""


def _kinds(annotation) -> list[str] | None:
    """'int | None' -> ['int', 'None']; None for an annotation this module does not check."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    kinds = [k.strip() for k in text.split("|")]
    return kinds if all(k in _CHECKS for k in kinds) else None


def check_fields(config) -> None:
    """Raise ConfigError if a field's value does not have its annotated type; turn ints in
    float fields into floats and plain ints from NumPy into Python ints."""
    owner = type(config).__name__
    for f in dataclasses.fields(config):
        kinds = _kinds(f.type)
        if kinds is None:
            continue
        value = getattr(config, f.name)
        if not any(_CHECKS[k](value) for k in kinds):
            wanted = " or ".join(_NAMES[k] for k in kinds)
            raise ConfigError(f"{owner}.{f.name} must be {wanted}, got {value!r} ({type(value).__name__})")
        if value is not None and not isinstance(value, bool):
            if "float" in kinds and isinstance(value, numbers.Real) and "int" not in kinds:
                setattr(config, f.name, float(value))
            elif "int" in kinds and isinstance(value, numbers.Integral):
                setattr(config, f.name, int(value))


def config_from_dict(cls, d, source: str | None = None):
    """``cls(**d)`` with every field checked; errors say which file (``source``) is at fault."""
    where = f"{source}: " if source else ""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}a {cls.__name__} must be a JSON object, got {type(d).__name__} {d!r:.80}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}{cls.__name__}: unknown fields {unknown} (it has {sorted(known)})")
    try:
        return cls(**d)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    except ValueError as e:                # a range check in __post_init__ (it names the config)
        raise ConfigError(f"{where}{e}") from None
    except TypeError as e:                 # a required field missing
        raise ConfigError(f"{where}{cls.__name__}: {e}") from None
