"""What a decoding method is: a ``DecodingMethod`` declares its options, the hidden states it
needs, how a sequence starts, its batched pick and the record fields it adds.

The engine, the command line and the server ask the method; none of them compares a method's
name. A method is one module with one ``DecodingMethod`` instance, plus a line in
``registry.py``. The defaults here are those of a method that reads the final logits only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from led_local.decoding.options import Option

if TYPE_CHECKING:
    from led_local.decoding.engine import Engine, Sequence
    from led_local.decoding.methods import DecodeConfig
    from led_local.llama.gguf_info import ModelInfo


@dataclass
class Batch:
    """One pick over a decode's outputs: sequence i reads output row ``rows[i]``, its final
    logits ``final[i]`` (None where no method needs them) and, where states were captured,
    ``states[i]`` (captured columns x n_embd). Methods fill ``tokens[i]`` and ``depths[i]``
    (the depth a token came from; None: the final layer)."""

    seqs: list[Sequence]
    cfgs: list[DecodeConfig]
    rows: list[int]
    final: np.ndarray | None
    states: np.ndarray | None
    tokens: list[int]
    depths: list[int | None]


class DecodingMethod:
    """A decoding method. ``name``: its name in every interface; ``help``: one line;
    ``options``: its own options; ``shared``: the shared options it reads (options.py);
    ``defaults``: its own defaults for shared options; ``reads_logits``: its pick needs the
    final logits as an array; ``reads_states``: it projects hidden states; ``records``: the
    key of its record field (None: none)."""

    name: str = ""
    help: str = ""
    options: tuple[Option, ...] = ()
    shared: tuple[Option, ...] = ()
    defaults: dict[str, Any] = {}
    reads_logits: bool = True
    reads_states: bool = False  # its pick reads projected hidden states (``layers``)
    records: str | None = None

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DecodingMethod) and other.name == self.name

    # -- options ----------------------------------------------------------------------------
    def all_options(self) -> tuple[Option, ...]:
        return self.shared + self.options

    def default(self, opt: Option) -> Any:
        return self.defaults.get(opt.name, opt.default)

    def configure(self, values: dict[str, Any], base: DecodeConfig | None) -> dict[str, Any]:
        """The DecodeConfig fields of this method's own options from their ``values`` (every
        option of ``all_options``, defaults filled in); ``base``: the configuration a request
        starts from (the server's), None on the command line."""
        return {"extra": tuple((o.name, values[o.name]) for o in self.options)}

    def values(self, cfg: DecodeConfig) -> dict[str, Any]:
        """This method's own option values as held by ``cfg`` (the inverse of configure)."""
        return {o.name: cfg.option(o.name, self.default(o)) for o in self.options}

    def params(self, cfg: DecodeConfig) -> dict:
        """The parameters that shape its output, for records and fingerprints."""
        p: dict = {"temperature": cfg.temperature}
        p.update({o.name: cfg.option(o.name, self.default(o)) for o in self.options})
        return p

    # -- model and engine -------------------------------------------------------------------
    def layers(self, info: ModelInfo, cfg: DecodeConfig) -> list[int]:
        """The hidden-state indices it projects (none: the final logits are enough)."""
        return []

    def check_model(self, info: ModelInfo, cfg: DecodeConfig) -> None:
        """Refuse a configuration the model cannot run (LedError)."""

    def graph_candidates(self, cfg: DecodeConfig) -> int | None:
        """With the in-graph projection: how many final-layer candidates to read back per
        depth (None: every token)."""
        return None

    def head_extras(self, cfg: DecodeConfig) -> bool:
        """Whether the projected states get what follows the model's head (logit scale,
        soft-capping) like the final logits (docs/LED.md); the output bias always."""
        return True

    def graph_refusal(self, info: ModelInfo, cfg: DecodeConfig) -> str | None:
        """Why the in-graph projection cannot serve ``cfg`` on this model (None: it can):
        it applies the head's extras to every depth."""
        if not self.head_extras(cfg) and (info.final_softcap or info.logit_scale != 1.0):
            return (f"applies the logit scale and soft-capping of '{info.architecture}' to "
                    f"every depth, which {self.describe(cfg)} leaves out")
        return None

    def norm(self, cfg: DecodeConfig) -> bool:
        """Whether shallower states pass through the final norm before the LM head."""
        return cfg.led.norm

    def graph_key(self, cfg: DecodeConfig) -> tuple:
        """What the in-graph projection is built for; a sequence may only share it as is."""
        return (self.name, cfg.temperature, self.norm(cfg), tuple(self.layers_key(cfg)))

    def layers_key(self, cfg: DecodeConfig) -> tuple:
        return ()

    def describe(self, cfg: DecodeConfig) -> str:
        """How an engine for ``cfg`` was started, for error messages."""
        return f"method {self.name}"

    def setup(self, engine: Engine) -> None:
        """Load what the engine needs for this method (started as the engine's own)."""

    def check(self, engine: Engine, cfg: DecodeConfig) -> None:
        """Refuse a per-sequence configuration ``engine`` cannot run (LedError)."""

    # -- sequences ------------------------------------------------------------------------
    def start(self, engine: Engine, seq: Sequence, cfg: DecodeConfig,
              seed: np.random.SeedSequence) -> None:
        """Give a new sequence its randomness (a numpy Generator by default) and state."""
        seq.rng = np.random.default_rng(seed)

    def wants_states(self, seq: Sequence, cfg: DecodeConfig) -> bool:
        """Whether this step needs ``seq``'s hidden states."""
        return False

    def pick(self, engine: Engine, batch: Batch, idx: list[int]) -> None:
        """Choose the next token of the batch's sequences ``idx`` (their own randomness)."""
        raise NotImplementedError

    def logprob_temperature(self, cfg: DecodeConfig) -> float:
        """The temperature a token's recorded log-probability is computed at."""
        return cfg.temperature

    def explore_chance(self, seq: Sequence, cfg: DecodeConfig, final: np.ndarray) -> float | None:
        """The probability that this step of ``seq`` explores a shallower depth, from its
        final logits (V,) before the token is accepted (None: the method never explores).
        Reads no randomness, so asking for it changes no token."""
        return None

    def after_accept(self, engine: Engine, seq: Sequence) -> None:
        """After a picked token was accepted (a method may end the sequence)."""

    def record(self, seq: Sequence, cfg: DecodeConfig, *, full: bool = False) -> dict:
        """The fields it adds to a sample's record (``full``: with per-token lists)."""
        if seq.trace is None or self.records is None:
            return {}
        return {self.records: seq.trace.report(full=full)}

    def full_records(self, cfg: DecodeConfig) -> bool:
        """Whether solve's records carry its per-token lists."""
        return False
