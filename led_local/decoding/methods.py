"""A run's decoding configuration: ``DecodeConfig`` holds the method's name, the shared
options and the settings of the built-in methods (``led``, ``hapo``, ``swir``, ``dola_layers``;
other methods keep theirs in ``extra``), and ``build_config`` makes one from option values.

What each method means, which options it reads and how it picks are its own module's
(``registry``); a sequence's randomness derives from ``seed_sequence`` alone, so its tokens
never depend on what shares its batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from led_local.decoding import led, options, registry
from led_local.decoding.hapo import HAPOConfig
from led_local.decoding.sample import LlamaSampler
from led_local.decoding.samplers import LEDConfig
from led_local.decoding.swir import SwirConfig
from led_local.decoding.unit import DecodingMethod
from led_local.errors import ConfigError

METHODS = tuple(registry.METHODS)
SHARED = (options.TEMPERATURE, options.TOP_K, options.TOP_P, options.MIN_P, options.THINK_END)

__all__ = ["METHODS", "DecodeConfig", "LlamaSampler", "build_config", "seed_sequence"]


@dataclass(frozen=True)
class DecodeConfig:
    """One decoding method and its parameters (see each method's module for its meaning).

    ``extra``: (option name, value) pairs of methods whose settings have no field here."""

    method: str = led.NAME
    temperature: float = 0.6
    top_k: int = 20
    top_p: float = 0.95
    min_p: float = 0.0
    led: LEDConfig = field(default_factory=LEDConfig)
    dola_layers: str = "low"
    think_end: str | None = None  # LED's scope ends here (None: the chat format's marker)
    hapo: HAPOConfig = field(default_factory=HAPOConfig)
    swir: SwirConfig = field(default_factory=SwirConfig)
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        registry.get(self.method)
        for opt in SHARED:
            opt.check(getattr(self, opt.name))
        from led_local.decoding.dola import LAYERS

        LAYERS.check(self.dola_layers)

    @property
    def unit(self) -> DecodingMethod:
        return registry.METHODS[self.method]

    def option(self, name: str, default: Any = None) -> Any:
        """The value of option ``name`` kept in ``extra`` (``default`` when absent)."""
        return dict(self.extra).get(name, default)

    def with_format(self, fmt) -> DecodeConfig:
        """This configuration with the thinking-end marker of chat format ``fmt`` where none
        was given (``think_end`` None)."""
        if self.think_end is not None:
            return self
        return dataclasses.replace(self, think_end=fmt.think_end)

    def params(self) -> dict:
        """The parameters that shape this method's output, for JSON records."""
        return self.unit.params(self)


def build_config(method: str, given: dict[str, Any], *,
                 base: DecodeConfig | None = None) -> DecodeConfig:
    """The configuration of ``method`` from the option values ``given`` (None: not given).

    Options not given take ``base``'s values (a request on a server) or else the method's
    defaults. An option the method does not read is refused (ConfigError), and so is a value
    out of its range."""
    unit = registry.get(method)
    names = {o.name for o in unit.all_options()}
    for name, value in given.items():
        if value is not None and name not in names:
            users = registry.users(name)
            raise ConfigError(name, f"applies to `method` {'/'.join(users)}, not {unit.name}")
    own = unit.values(base) if base is not None else {}
    values: dict[str, Any] = {}
    for o in unit.all_options():
        v = given.get(o.name)
        if v is None and base is not None:
            v = getattr(base, o.name) if o in SHARED else own.get(o.name, unit.default(o))
        elif v is None:
            v = unit.default(o)
        values[o.name] = o.check(v)
    # a request keeps every setting of the server's that it does not change
    fields = ({f.name: getattr(base, f.name) for f in dataclasses.fields(base)
               if f.name != "method"} if base is not None else {})
    fields.update({o.name: values[o.name] for o in unit.shared})
    fields.update(unit.configure(values, base))
    return DecodeConfig(method=unit.name, **fields)


def seed_sequence(*parts: int | str) -> np.random.SeedSequence:
    """A SeedSequence from (run seed, problem id, sample index, ...) that is stable across
    processes and platforms (strings are hashed by their UTF-8 bytes, not Python's hash)."""
    entropy: list[int] = []
    for p in parts:
        if isinstance(p, str):
            data = p.encode("utf-8")
            entropy.append(len(data))
            entropy.extend(data)
        else:
            entropy.append(int(p) & 0xFFFFFFFFFFFFFFFF)
    return np.random.SeedSequence(entropy)
