"""The decode thread's events as OpenAI responses: one JSON object, or SSE chunks.

Events (dicts, see ``scheduler``): text ``{index, reasoning, content, logprobs, led_tokens}``,
the end of a choice ``{index, finish_reason, completion_tokens, explored}``, or ``{error}``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from led_local.serve import protocol as P
from led_local.serve.scheduler import Scheduler, Work


class Collector:
    """Accumulates a non-streaming request's events into its response."""

    def __init__(self, work: Work, *, chat: bool) -> None:
        self.work = work
        self.chat = chat
        self.reasoning = [""] * work.n
        self.content = [""] * work.n
        self.logprobs: list[list[dict]] = [[] for _ in range(work.n)]
        self.tool_calls: list[list[dict]] = [[] for _ in range(work.n)]
        self.ends: dict[int, dict] = {}
        self.error: str | None = None
        self.status = 500  # of the error

    @property
    def done(self) -> bool:
        return self.error is not None or len(self.ends) == self.work.n

    def add(self, event: dict) -> None:
        if "error" in event:
            self.error = event["error"]
            self.status = event.get("status", 500)
        elif "finish_reason" in event:
            self.ends[event["index"]] = event
        else:
            i = event["index"]
            self.reasoning[i] += event["reasoning"]
            self.content[i] += event["content"]
            self.logprobs[i] += event["logprobs"]
            self.tool_calls[i] += [{k: v for k, v in c.items() if k != "index"}
                                   for c in event.get("tool_calls", [])]

    def response(self, meta: dict) -> dict:
        choices = []
        for i in range(self.work.n):
            end = self.ends[i]
            choice: dict = {"index": i}
            if self.chat:
                message: dict = {"role": "assistant", "content": self.content[i]}
                if self.reasoning[i]:
                    message["reasoning_content"] = message["reasoning"] = self.reasoning[i]
                if self.tool_calls[i]:
                    message["tool_calls"] = self.tool_calls[i]
                    message["content"] = self.content[i] or None
                choice["message"] = message
            else:
                choice["text"] = self.content[i]
            choice["logprobs"] = _logprobs(self.work, self.logprobs[i], chat=self.chat)
            choice["finish_reason"] = end["finish_reason"]
            choice["led"] = {"explored": end["explored"], "seed": meta["seed"]}
            choices.append(choice)
        n_out = sum(e["completion_tokens"] for e in self.ends.values())
        return {"id": meta["id"], "object": "chat.completion" if self.chat else "text_completion",
                "created": meta["created"], "model": meta["model"],
                "system_fingerprint": meta["system_fingerprint"], "choices": choices,
                "usage": P.usage(len(self.work.tokens), n_out, cached=self.work.cached)}


def _logprobs(work: Work, entries: list[dict], *, chat: bool, offset: int = 0) -> dict | None:
    if not work.logprobs:
        return None
    return P.chat_logprobs(entries) if chat else P.text_logprobs(entries, offset)


async def stream_chunks(queue: asyncio.Queue, work: Work, scheduler: Scheduler, meta: dict, *,
                        chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """SSE data for a streaming request: the role first (chat), text deltas, each choice's
    finish_reason, the usage when asked, then [DONE]. Leaving early cancels the work."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    head = {"id": meta["id"], "object": obj, "created": meta["created"], "model": meta["model"],
            "system_fingerprint": meta["system_fingerprint"]}
    tail = {"usage": None} if include_usage else {}
    offsets = [0] * work.n

    def chunk(choice: dict) -> str:
        return _dumps({**head, "choices": [choice], **tail})

    finished = 0
    n_out = 0
    try:
        if chat:
            for i in range(work.n):
                yield chunk({"index": i, "delta": {"role": "assistant", "content": None},
                             "logprobs": None, "finish_reason": None})
        while finished < work.n:
            event = await queue.get()
            if "error" in event:  # a final error event, then the end of the stream
                yield _dumps({"error": P.APIError(event.get("status", 500), event["error"],
                                                  type="server_error").body()["error"]})
                yield "[DONE]"
                break
            i = event["index"]
            if "finish_reason" in event:
                finished += 1
                n_out += event["completion_tokens"]
                end = {"index": i, "delta": {}} if chat else {"index": i, "text": ""}
                yield chunk({**end, "logprobs": None, "finish_reason": event["finish_reason"],
                             "led": {"explored": event["explored"], "seed": meta["seed"]}})
                continue
            if chat:
                delta: dict = {}
                if event["reasoning"]:
                    delta["reasoning_content"] = delta["reasoning"] = event["reasoning"]
                if event["content"]:
                    delta["content"] = event["content"]
                if event.get("tool_calls"):
                    delta["tool_calls"] = event["tool_calls"]
                body = {"index": i, "delta": delta}
            else:
                body = {"index": i, "text": event["content"]}
            body["logprobs"] = _logprobs(work, event["logprobs"], chat=chat, offset=offsets[i])
            body["finish_reason"] = None
            if work.led_tokens:
                body["led_tokens"] = event["led_tokens"]
            offsets[i] += len(event["content"])
            yield chunk(body)
        else:
            if include_usage:
                yield _dumps({**head, "choices": [],
                              "usage": P.usage(len(work.tokens), n_out, cached=work.cached)})
            yield "[DONE]"
    finally:
        if finished < work.n:  # the client left (or the stream failed): free the slots
            scheduler.cancel(work)


def _dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
