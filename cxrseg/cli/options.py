"""How options read in --help: literal help text, the effective default always shown, flags shown as flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from cxrseg.config import Settings

BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0", "y", "n"}
DEFAULT_STYLE = "dim"  # typer's own style for "[default: ...]"


def setting_default(path: str) -> Any:
    """The default of a setting such as "train.epochs", from the Settings classes (no env, no config file)."""
    section, name = path.split(".")
    # the declared default, as written (a folder relative to where the command runs, not made absolute here)
    return Settings.model_fields[section].annotation.model_fields[name].get_default(call_default_factory=True)


def _show(value: Any, names: tuple[str, ...]) -> str:
    """A default as the user would type it: a flag's name for on/off, folders joined, 'none' for unset."""
    if isinstance(value, bool):
        declared = names[0].split("/") if names else []
        if len(declared) == 2:
            return declared[0 if value else 1].strip().lstrip("-")
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def option(
    *names: str,
    help: str,  # noqa: A002 - typer's own keyword
    setting: str | None = None,
    default: Any = None,
    panel: str | None = None,
    flag: bool = False,
    **kwargs: Any,
) -> Any:
    """A typer.Option whose help is shown literally, with its effective default.

    Args:
        names: the option declarations, e.g. "--tta/--no-tta".
        help: plain text; brackets such as "[test_image/]" are escaped, never read as rich markup.
        setting: the "section.field" whose Settings default is shown (the option itself defaults to None).
        default: what to show when no setting applies: a value or a sentence such as "the bundled model";
            with neither, no default is shown (for --version, which is an action, not a setting).
        panel: the help panel the option is listed in.
        flag: an on/off flag, shown without a value type (no `<bool>`).
    """
    text = escape(help)
    if setting is not None or default is not None:
        shown = _show(setting_default(setting) if setting else default, names)
        text += f" [{DEFAULT_STYLE}]\\[default: {escape(shown)}][/{DEFAULT_STYLE}]"
    if flag:
        kwargs.setdefault("metavar", "")
    return typer.Option(*names, help=text, show_default=False, rich_help_panel=panel, **kwargs)


def _refuse_flag_values(command: Any, ctx: Any, args: list[str]) -> None:
    """`--deterministic true`: say that on/off flags take no value instead of "unexpected extra argument"."""
    flags = {}
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and not getattr(param, "count", False):
            for name in param.opts:
                flags[name] = param.secondary_opts
    for name, value in zip(args, args[1:], strict=False):
        if name == "--":
            return
        if name in flags and value.lower() in BOOL_WORDS and not Path(value).exists():
            negative = f" or {flags[name][0]}" if flags[name] else ""
            raise typer.BadParameter(
                f"an on/off flag takes no value; write {name}{negative} without '{value}'",
                ctx=ctx,
                param_hint=name,
            )


class _FlagsAsFlags:
    """Shared by the app and its commands: --help shown without a type, values after flags refused clearly."""

    def get_help_option(self, ctx: Any) -> Any:
        help_option = super().get_help_option(ctx)  # type: ignore[misc]
        if help_option is not None:
            help_option.metavar = ""
        return help_option

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        _refuse_flag_values(self, ctx, args)
        return super().parse_args(ctx, args)  # type: ignore[misc]


class Command(_FlagsAsFlags, TyperCommand):
    """A cxrseg command."""


class Group(_FlagsAsFlags, TyperGroup):
    """The cxrseg app."""

    def invoke(self, ctx: Any) -> Any:
        """Ctrl-C in a command becomes Interrupted, which main() reports; typer would turn KeyboardInterrupt
        into a silent exit code 130 before main() sees it."""
        from cxrseg.errors import Interrupted

        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise Interrupted() from exc
