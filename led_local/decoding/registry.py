"""The decoding methods by name: one line per method. Everything that offers a choice of
method (the command line, the server, the engine) reads this registry."""

from __future__ import annotations

from led_local.decoding import dola, greedy, hapo, led, sample, swir
from led_local.decoding.options import Option
from led_local.decoding.unit import DecodingMethod
from led_local.errors import ConfigError

METHODS: dict[str, DecodingMethod] = {}
DEFAULT = led.METHOD.name


def register(method: DecodingMethod) -> DecodingMethod:
    """Add ``method`` under its name (a second method of the same name is refused)."""
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"a decoding method named {method.name!r} is registered already")
    METHODS[method.name] = method
    return method


for _unit in (led.METHOD, sample.METHOD, greedy.METHOD, dola.METHOD, hapo.METHOD,
              swir.METHOD):
    register(_unit)


def get(name: str) -> DecodingMethod:
    """The method called ``name``; ConfigError for an unknown one."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError("method", f"must be one of {', '.join(METHODS)}, got {name!r}") \
            from None


def options() -> list[Option]:
    """Every decoding option of every method, each once, in declaration order."""
    seen: dict[str, Option] = {}
    for m in METHODS.values():  # the shared ones first
        for o in m.shared:
            seen.setdefault(o.name, o)
    for m in METHODS.values():
        for o in m.options:
            seen.setdefault(o.name, o)
    return list(seen.values())


def users(name: str) -> list[str]:
    """The methods that read option ``name``."""
    return [m.name for m in METHODS.values() if any(o.name == name for o in m.all_options())]


def default_text(o: Option) -> str:
    """An option's default as help and docs show it: the common one, then the methods' own."""
    if o.default_help is not None:
        return o.default_help
    other = [f"{n}: {METHODS[n].default(o)}" for n in users(o.name)
             if METHODS[n].default(o) != o.default]
    return "; ".join([str(o.default)] + other)


def options_table() -> str:
    """The Markdown table of every decoding option (docs/options.md holds it; a test keeps
    the two in step)."""
    rows = ["| option | flag | request field | methods | default | meaning |",
            "|---|---|---|---|---|---|"]
    for o in options():
        readers = users(o.name)
        scope = "all" if len(readers) == len(METHODS) else ", ".join(readers)
        rng = o.range_text() or (" or ".join(o.choices) if o.choices else "")
        meaning = o.help + (f" ({rng})" if rng else "")
        flag = f"`{o.short + ', ' if o.short else ''}{o.cli_flag}`" if o.cli_flag else ""
        field = f"`{o.field}`" if o.field else ""
        meaning = meaning.replace("<", "&lt;")
        rows.append(f"| `{o.name}` | {flag} | {field} | {scope} | `{default_text(o)}` | "
                    f"{meaning} |")
    return "\n".join(rows) + "\n"
