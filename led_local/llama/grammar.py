"""Constrained output through llama.cpp's grammar sampler: GBNF grammars and JSON schemas.

A ``Grammar`` is the source text of a GBNF grammar, checked once against the vocabulary; a
``GrammarState`` is one sequence's position in it (llama.cpp's ``llama_sampler_init_grammar``,
owned and freed here). ``mask`` sets the logits of every token the grammar does not allow next
to -inf, in place; ``accept`` advances it by the token emitted. Neither draws a random
number. End-of-generation tokens are allowed only where the grammar is complete (llama.cpp's
rule), so a constrained sequence stops exactly when its output is. JSON schemas become GBNF
through llama-cpp-python's converter (``llama_grammar.json_schema_to_gbnf``); plain JSON
(``json_object``) is its ``JSON_GBNF``.
"""

from __future__ import annotations

import ctypes
import json
import re
from dataclasses import dataclass

import llama_cpp
import numpy as np
from llama_cpp import llama_grammar

from led_local.errors import ConfigError, LedError

ROOT = "root"
# llama_token_data {int32 id; float logit; float p}, as llama.cpp lays it out
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


# JSON's string characters: llama-cpp-python's converter lets control characters (a raw
# newline) into strings, which no JSON parser reads; llama.cpp's own converter and JSON_GBNF
# keep them out, as JSON (RFC 8259, 7) does
CHAR_RULE = re.compile(r"^char ::= .*$", re.M)
STRICT_CHAR = (r'char ::= [^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] '
               '[0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])')


def strict_strings(gbnf: str) -> str:
    """A converted grammar with JSON's string characters (no raw control characters)."""
    return CHAR_RULE.sub(lambda _: STRICT_CHAR, gbnf)


@dataclass(frozen=True)
class Grammar:
    """A GBNF grammar (``text``, start rule ``root``); ``source`` says where it came from
    (``grammar``, ``json_schema``, ``json_object``) for messages and records."""

    text: str
    source: str = "grammar"
    root: str = ROOT  # the start rule
    whole: bool = False  # it spans the whole reply, thinking included (else only the answer)

    def after(self, prefix: str, rules: str) -> Grammar:
        """This grammar behind ``prefix`` (a GBNF expression over ``rules``, more rules): the
        grammar of a reply that writes the prefix, then an answer this grammar allows."""
        start = "led-reply"
        text = f"{self.text.rstrip()}\n{rules.rstrip()}\n{start} ::= {prefix} {self.root}\n"
        return Grammar(text, self.source, start, whole=True)

    @classmethod
    def from_schema(cls, schema: dict | bool, *, param: str = "json_schema") -> Grammar:
        """The grammar of JSON documents valid against ``schema`` (ConfigError naming
        ``param`` when the converter refuses it)."""
        if not isinstance(schema, (dict, bool)):
            raise ConfigError(param, f"must be a JSON schema object, got {type(schema).__name__}")
        try:
            text = strict_strings(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
        except Exception as e:  # the converter raises ValueError, KeyError, TypeError, ...
            raise ConfigError(param, f"is not a JSON schema the grammar converter supports: "
                              f"{type(e).__name__}: {e}") from None
        return cls(text, "json_schema")

    @classmethod
    def json_object(cls) -> Grammar:
        """Any JSON object."""
        return cls(llama_grammar.JSON_GBNF, "json_object")

    def check(self, vocab, *, param: str = "grammar") -> None:
        """Refuse a grammar llama.cpp cannot parse (ConfigError naming ``param``)."""
        GrammarState(self, vocab, param=param).close()


class GrammarState:
    """One sequence's grammar sampler over ``vocab`` (a ``llama_vocab`` pointer)."""

    def __init__(self, grammar: Grammar, vocab, *, param: str = "grammar") -> None:
        if not grammar.text.strip():
            raise ConfigError(param, "is empty")
        self.grammar = grammar
        self.smpl = llama_cpp.llama_sampler_init_grammar(
            vocab, grammar.text.encode("utf-8"), grammar.root.encode("utf-8"))
        if not self.smpl:
            self.smpl = None
            raise ConfigError(param, "is not a GBNF grammar llama.cpp can parse (start rule "
                              f"{grammar.root!r}; with `verbose` on, llama.cpp says why)")
        self._data: np.ndarray | None = None
        self._allowed: np.ndarray | None = None  # what the last mask let through

    def mask(self, logits: np.ndarray) -> None:
        """Set the tokens the grammar does not allow next to -inf in ``logits`` (V,) float32,
        in place (it may be llama.cpp's own output row)."""
        n = logits.shape[0]
        if self._data is None or self._data.shape[0] != n:
            self._data = np.zeros(n, TOKEN_DATA)
            self._data["id"] = np.arange(n, dtype=np.int32)
        data = self._data
        data["logit"] = logits
        arr = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
            size=n, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.smpl, ctypes.byref(arr))
        if arr.size != n:  # the grammar sampler only masks; it never reorders or drops
            raise RuntimeError("llama.cpp's grammar sampler changed the candidate array")
        self._allowed = np.isfinite(data["logit"])
        logits[~self._allowed] = -np.inf

    def accept(self, token: int) -> None:
        """Advance past ``token`` (never an end-of-generation token: it ends the sequence).
        A token the last ``mask`` forbade is refused (LedError): llama.cpp would abort the
        process on it."""
        if self._allowed is not None and not self._allowed[token]:
            raise LedError(f"token {token} is not allowed by the {self.grammar.source} here")
        llama_cpp.llama_sampler_accept(self.smpl, token)

    def close(self) -> None:
        if self.smpl is not None:
            llama_cpp.llama_sampler_free(self.smpl)
            self.smpl = None

    def __del__(self) -> None:
        self.close()
