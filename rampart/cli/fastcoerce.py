"""Plain CLI values without importing Pydantic (start-up time, issue 12).

Typer (0.2x) converts every parameter value with a Pydantic ``TypeAdapter``:
the first value a command converts imports Pydantic and builds an adapter,
which costs more than the rest of a read command's start-up. Nearly every
value this CLI takes is a plain ``str``, a list of them, a decimal ``int`` or a
``Path``; :func:`install` gives those a direct conversion that returns exactly
what Typer's adapter would (tests/test_cli_lazy.py compares the two for every
parameter of every command). Anything else, and any value the direct way does
not accept, goes to Typer's own adapter, so every error message is Typer's.

If Typer's internals are not the ones this was written for, nothing is changed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_SLOW = object()  # "ask Typer's adapter"
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII digits only; Pydantic also takes "+5", "1_000", " 5"


def quick_value(annotation: Any, info: Any, value: Any, param: Any = None, ctx: Any = None) -> Any:
    """The converted value, or ``_SLOW`` when Typer's adapter must decide."""
    if info.parser is not None:
        return _SLOW
    if annotation is str:
        return value if type(value) is str else _SLOW
    if annotation == list[str]:
        if isinstance(value, (list, tuple)) and all(type(v) is str for v in value):
            return list(value)
        return _SLOW
    if annotation is int:
        if info.clamp:
            return _SLOW
        if type(value) is str and _DIGITS.fullmatch(value):
            number = int(value)
        elif type(value) is int:
            number = value
        else:
            return _SLOW
        if (info.min is not None and number < info.min) or (info.max is not None and number > info.max):
            return _SLOW
        return number
    if annotation is Path and info.path_type is None:
        if type(value) is not str or not value:
            return _SLOW
        from typer._param_types import coerce_cli_path

        try:
            return coerce_cli_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
        except Exception:
            return _SLOW  # let Typer's adapter say what is wrong
    return _SLOW


def install() -> bool:
    """Make Typer convert plain values directly; False (and no change) on an unknown Typer."""
    try:
        from dataclasses import dataclass

        from typer import _coercion, core

        param_cls = core._TyperParameter
        base = _coercion.RuntimeParam
        build = _coercion.build_runtime_param
        original = param_cls.get_runtime_param
    except (ImportError, AttributeError):
        return False
    if getattr(original, "_rampart_quick", False):
        return True

    @dataclass(frozen=True)
    class QuickRuntimeParam(base):  # type: ignore[misc, valid-type]
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                got = quick_value(self.annotation, self.parameter_info, value, param, ctx)
            except Exception:  # e.g. another Typer's ParameterInfo: Typer decides
                got = _SLOW
            if got is not _SLOW:
                return got
            full = param.__dict__.get("_rampart_full")
            if full is None:
                full = param.__dict__["_rampart_full"] = build(param.type_descriptor)
            return full._coerce_value(value, param=param, ctx=ctx)

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            try:
                desc = self.type_descriptor
                if desc.file_annotation is None:
                    self._runtime_param = QuickRuntimeParam(annotation=desc.annotation,
                                                            parameter_info=desc.parameter_info)
            except Exception:  # not the Typer this was written for: its own conversion
                self._runtime_param = None
        return original(self)

    get_runtime_param._rampart_quick = True  # type: ignore[attr-defined]
    param_cls.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
    return True
