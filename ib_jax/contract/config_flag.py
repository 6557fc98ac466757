"""`--config=configs/x.py[:arg]` whose mistakes end in one line: the config flag of every job.

`ml_collections.config_flags` reports a misspelt override (`--config.train.num_stepz=5`) as a
57-line AttributeError traceback out of absl's flag parsing, a config file that does not exist as
"Configuration is not available because of an earlier failure to load" only when it is first read,
and an error inside `get_config(arg)` as a traceback wrapped in a string. Flag parsing happens
before a job's `main`, so `cli.guarded` cannot catch any of it. Here the config flag's parsing
catches them instead and keeps one `ConfigFlagError` naming the flag (the override, the path,
the closest known field); `cli.guarded` raises it as the job starts (exit status 3, one line,
traceback in the log). Values keep the types ml_collections gives them (the field's type).
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

# The flags defined here belong to the module calling `define` (its `--help` lists them).
flags.disclaim_key_flags()


class ConfigFlagError(ValueError):
    """The `--config` flag or one of its `--config.x.y` overrides cannot be used (exit status 3)."""


# The first error met while parsing the config flag or an override, raised by `raise_deferred`.
_deferred: ConfigFlagError | None = None


class _Unusable:
    """The flag's value after a failure: any use raises the error (for a job not `guarded`)."""

    def __init__(self, error: ConfigFlagError) -> None:
        object.__setattr__(self, "_error", error)

    def __getattr__(self, name: str) -> Any:
        raise object.__getattribute__(self, "_error")

    def __getitem__(self, key: Any) -> Any:
        raise object.__getattribute__(self, "_error")


def _defer(error: ConfigFlagError) -> _Unusable:
    global _deferred
    if _deferred is None:
        _deferred = error
    return _Unusable(error)


def raise_deferred() -> None:
    """Raise the error met while parsing the config flags, if any (`cli.guarded` calls this)."""
    global _deferred
    error, _deferred = _deferred, None
    if error is not None:
        raise error


def closest(name: str, known: list[str]) -> str:
    """' (did you mean X?)' for the known name closest to `name` (difflib), or ''."""
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown_field(config: Any, path: str) -> str | None:
    """Why `path` ("train.num_stepz") names no field of `config`, or None when it does."""
    node, walked = config, []
    for part in path.split("."):
        keys = list(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
        if part not in keys:
            where = ".".join(walked)
            known = ", ".join(sorted(keys)) if keys else "none (not a section)"
            return (
                f"--config.{path}: {where + '.' if where else ''}{part} is not a config field"
                f"{closest(part, keys)}; known fields of {where or 'the config'}: {known}"
            )
        node, walked = node[part], [*walked, part]
    return None


def _root_cause(error: BaseException) -> BaseException:
    """The error get_config or a value's parser raised: ml_collections re-raises get_config's
    TypeError/ValueError with the traceback as its message, and absl wraps that again in an
    IllegalFlagValueError; the original is their context."""
    while error.__context__ is not None and (
        isinstance(error, flags.IllegalFlagValueError)
        or str(error).startswith("Error whilst parsing config file")
    ):
        error = error.__context__
    return error


def _config_error(flag: Any, argument: str, error: BaseException) -> ConfigFlagError:
    """One line for a failure of the config flag's own parsing (file, get_config, overrides)."""
    path = argument.split(":", 1)[0]
    if not os.path.isfile(path):
        return ConfigFlagError(f"--{flag.name}={argument}: no such config file {path!r}")
    cause = _root_cause(error)
    if isinstance(cause, (AttributeError, KeyError)) or "Did you mean" in str(cause):
        try:  # which override names no field? (the config loads again: only on this path)
            config = flag.parser.parse(argument)
            for override in flag._GetOverrides(flag._GetArgv()):
                message = unknown_field(config, override)
                if message:
                    return ConfigFlagError(message)
        except Exception:  # noqa: BLE001 - fall through to the error's own message
            pass
    message = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return ConfigFlagError(f"--{flag.name}={argument}: {type(cause).__name__}: {message}")


def _guard_overrides(flag_values: flags.FlagValues, name: str) -> None:
    """Wrap every `--<name>.x.y` override flag's parse: a bad value becomes a deferred error."""
    for key in list(flag_values):
        override = flag_values[key]
        if not key.startswith(name + ".") or getattr(override, "_guarded", False):
            continue
        parse = override.parse

        def guarded_parse(argument: Any, parse=parse, override=override) -> None:
            try:
                parse(argument)
            except Exception as error:  # noqa: BLE001 - any failure of a value: one line
                reason = str(_root_cause(error)).strip().splitlines()[0]
                if reason.startswith(f"flag --{override.name}="):  # absl's prefix: said below
                    reason = reason.split(": ", 1)[-1]
                _defer(ConfigFlagError(f"--{override.name}={argument}: {reason}"))

        override.parse = guarded_parse
        override._guarded = True


def _accept_overrides(flag: Any) -> None:
    """After the config failed to load, define its `--<name>.x.y` overrides as plain flags, so
    that absl's parsing goes on and the deferred error (not "Unknown flag") is what is said."""
    try:
        overrides = flag._GetOverrides(flag._GetArgv())
    except Exception:  # noqa: BLE001 - e.g. an override before --config: absl says so
        return
    for override in overrides:
        if f"{flag.name}.{override}" not in flag.flag_values:
            flags.DEFINE_string(
                f"{flag.name}.{override}", None, "(config not loaded)", flag_values=flag.flag_values
            )


def define(
    name: str,
    help_string: str,
    flag_values: flags.FlagValues = flags.FLAGS,
    sys_argv: list[str] | None = None,
) -> flags.FlagHolder[ml_collections.ConfigDict]:
    """`ml_collections.config_flags.DEFINE_config_file(name, lock_config=True)` whose parse
    failures are deferred to `raise_deferred` as one-line `ConfigFlagError`s (`sys_argv`: where
    the overrides are read, default sys.argv)."""
    holder = config_flags.DEFINE_config_file(
        name, None, help_string, flag_values, lock_config=True, sys_argv=sys_argv
    )
    flag = flag_values[holder.name]
    parse = flag._parse

    def guarded_parse(argument: str) -> Any:
        path = str(argument).split(":", 1)[0]
        error = None
        if not os.path.isfile(path):
            error = ConfigFlagError(f"--{name}={argument}: no such config file {path!r}")
        else:
            try:
                config = parse(argument)
                if type(config).__name__ == "_ErrorConfig":  # an OSError in get_config
                    error = _config_error(flag, argument, object.__getattribute__(config, "_error"))
            except Exception as failure:  # noqa: BLE001 - any failure of the config: one line
                error = _config_error(flag, argument, failure)
        if error is not None:
            _accept_overrides(flag)
            return _defer(error)
        _guard_overrides(flag.flag_values, name)
        return config

    flag._parse = guarded_parse
    return holder
