"""OpenAI's Responses API (``POST /v1/responses``) over the chat completions path.

A request is translated into a chat request (``input`` items to messages, flat function
tools to chat tools, ``text.format`` to ``response_format``, ``reasoning.effort`` to the
template's effort; led-local's decoding fields pass through as they are), decoded the same
way, and its events become the Responses output: a ``reasoning`` item (the thinking, as
``reasoning_text``), a ``message`` item (``output_text``) and one ``function_call`` item per
tool call; streamed as the API's typed events (``response.created`` ...
``response.completed``). Nothing is stored: ``previous_response_id`` is refused.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from led_local.serve import protocol as P
from led_local.serve.responses import Collector
from led_local.serve.scheduler import Scheduler, Work

# fields of a Responses request that have no chat counterpart and change nothing here
IGNORED = ("store", "metadata", "truncation", "user", "service_tier", "include",
           "prompt_cache_key", "safety_identifier", "background")


def _fail(message: str, param: str | None = None) -> P.APIError:
    return P.APIError(400, message, param=param)


def _content(content, param: str) -> str:
    """The text of an input item's content: a string or input_text/output_text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _fail(f"{param}: content must be a string or a list of parts", param)
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text", "reasoning_text",
                        "summary_text"):
            raise _fail(f"{param}: content parts of type {kind!r} are not supported (text "
                        "only)", param)
        texts.append(part.get("text", ""))
    return "".join(texts)


def _messages(body: dict) -> list[dict]:
    """``instructions`` and ``input`` as chat messages; a reasoning item goes onto the next
    assistant message, function calls onto an assistant turn, their outputs as tool messages."""
    messages: list[dict] = []
    if body.get("instructions") is not None:
        if not isinstance(body["instructions"], str):
            raise _fail("instructions must be a string", "instructions")
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise _fail("input must be a string or a non-empty list of items", "input")
    reasoning = None
    for k, item in enumerate(items):
        param = f"input.{k}"
        if not isinstance(item, dict):
            raise _fail(f"{param}: an item must be an object", param)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _fail(f"{param}: role must be user, assistant, system or developer",
                            param)
            msg = {"role": "system" if role == "developer" else role,
                   "content": _content(item.get("content"), param)}
            if role == "assistant" and reasoning is not None:
                msg["reasoning_content"], reasoning = reasoning, None
            messages.append(msg)
        elif kind == "reasoning":
            reasoning = _content(item.get("content") or item.get("summary"), param)
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    raise _fail(f"{param}: a function_call needs {key} (a string)", param)
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant" or "tool_calls" not in last:
                last = {"role": "assistant", "content": None, "tool_calls": []}
                if reasoning is not None:
                    last["reasoning_content"], reasoning = reasoning, None
                messages.append(last)
            last["tool_calls"].append(call)
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str):
                raise _fail(f"{param}: a function_call_output needs call_id", param)
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": output if isinstance(output, str)
                             else _content(output, param)})
        else:
            raise _fail(f"{param}: items of type {kind!r} are not supported", param)
    return messages


def _tools(body: dict) -> dict:
    """Flat function tools and their choice as the chat request names them."""
    out: dict = {}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _fail("tools must be a list", "tools")
        out["tools"] = []
        for k, t in enumerate(tools):
            if not isinstance(t, dict) or t.get("type") != "function":
                kind = t.get("type") if isinstance(t, dict) else None
                raise _fail(f"tools.{k}: only function tools are supported, got {kind!r}",
                            f"tools.{k}")
            out["tools"].append({"type": "function", "function": {
                key: t[key] for key in ("name", "description", "parameters", "strict")
                if key in t}})
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        out["tool_choice"] = choice
    return out


def _format(body: dict) -> dict:
    """``text.format`` as a chat ``response_format``."""
    text = body.get("text")
    if text is None:
        return {}
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return {}
    if not isinstance(fmt, dict):
        raise _fail("text.format must be an object", "text.format")
    if fmt.get("type") == "json_schema":
        return {"response_format": {"type": "json_schema", "json_schema": {
            key: fmt[key] for key in ("name", "description", "schema", "strict") if key in fmt}}}
    return {"response_format": {"type": fmt.get("type")}}


def to_chat(raw: bytes) -> bytes:
    """A Responses request body as the chat completions body that decodes it."""
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise _fail(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise _fail("the body must be a JSON object")
    if body.get("previous_response_id") is not None:
        raise _fail("previous_response_id is not supported: led-local stores no responses "
                    "(send the whole conversation in input)", "previous_response_id")
    chat = {k: v for k, v in body.items()
            if k not in ("input", "instructions", "tools", "tool_choice", "text", "reasoning",
                         "max_output_tokens", "stream_options", *IGNORED)}
    for key in ("messages", "n", "max_tokens", "response_format", "stream_options"):
        chat.pop(key, None)  # chat fields a Responses body does not have
    chat["messages"] = _messages(body)
    chat.update(_tools(body), **_format(body))
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    return json.dumps(chat).encode("utf-8")


def _usage(work: Work, n_out: int) -> dict:
    return {"input_tokens": len(work.tokens),
            "input_tokens_details": {"cached_tokens": work.cached},
            "output_tokens": n_out, "total_tokens": len(work.tokens) + n_out}


def _shell(meta: dict, req: P.ChatRequest, status: str) -> dict:
    return {"id": meta["id"], "object": "response", "created_at": meta["created"],
            "model": meta["model"], "status": status, "error": None,
            "incomplete_details": None, "output": [], "parallel_tool_calls":
                bool(req.parallel_tool_calls), "tool_choice": "auto", "tools": [],
            "temperature": req.temperature, "top_p": req.top_p,
            "max_output_tokens": req.limit(), "store": False, "metadata": {},
            "text": {"format": {"type": "text"}}, "truncation": "disabled",
            "system_fingerprint": meta["system_fingerprint"], "led": {"seed": meta["seed"]}}


class Items:
    """The output items of one reply, built as its text arrives: ids, order, final state."""

    def __init__(self, meta: dict) -> None:
        self.base = meta["id"].removeprefix("resp_")
        self.items: list[dict] = []

    def open(self, kind: str) -> dict:
        n = len(self.items)
        if kind == "reasoning":
            item = {"type": "reasoning", "id": f"rs_{self.base}_{n}", "summary": [],
                    "content": [{"type": "reasoning_text", "text": ""}], "status": "completed"}
        else:
            item = {"type": "message", "id": f"msg_{self.base}_{n}", "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "", "annotations": [],
                                 "logprobs": []}]}
        self.items.append(item)
        return item

    def call(self, call: dict) -> dict:
        f = call["function"]
        item = {"type": "function_call", "id": f"fc_{self.base}_{len(self.items)}",
                "call_id": call["id"], "name": f["name"], "arguments": f["arguments"],
                "status": "completed"}
        self.items.append(item)
        return item


def response(collector: Collector, meta: dict, req: P.ChatRequest) -> dict:
    """The Responses object of a finished, non-streamed request."""
    items = Items(meta)
    if collector.reasoning[0]:
        items.open("reasoning")["content"][0]["text"] = collector.reasoning[0]
    if collector.content[0]:
        items.open("message")["content"][0]["text"] = collector.content[0]
    for call in collector.tool_calls[0]:
        items.call(call)
    end = collector.ends[0]
    out = _shell(meta, req, "completed")
    if end["finish_reason"] == "length":
        out["status"] = "incomplete"
        out["incomplete_details"] = {"reason": "max_output_tokens"}
        for item in items.items:
            item["status"] = "incomplete"
    out["output"] = items.items
    out["usage"] = _usage(collector.work, end["completion_tokens"])
    out["led"]["explored"] = end["explored"]
    return out


def _event(kind: str, seq: list[int], **fields) -> dict:
    seq[0] += 1
    return {"event": kind, "data": json.dumps({"type": kind, "sequence_number": seq[0] - 1,
                                               **fields}, ensure_ascii=False)}


async def stream_events(queue: asyncio.Queue, work: Work, scheduler: Scheduler, meta: dict,
                        req: P.ChatRequest) -> AsyncIterator[dict]:
    """The Responses stream of one request: created, in_progress, each item's added, delta
    and done events, then completed (or incomplete, or an error event and failed)."""
    seq = [0]
    items = Items(meta)
    shell = _shell(meta, req, "in_progress")
    yield _event("response.created", seq, response=shell)
    yield _event("response.in_progress", seq, response=shell)
    current: dict | None = None
    finished = False

    def close(item: dict) -> list[dict]:
        k = items.items.index(item)
        part = item["content"][0]
        if item["type"] == "reasoning":
            return [_event("response.reasoning_text.done", seq, item_id=item["id"],
                           output_index=k, content_index=0, text=part["text"]),
                    _event("response.output_item.done", seq, output_index=k, item=item)]
        return [_event("response.output_text.done", seq, item_id=item["id"], output_index=k,
                       content_index=0, text=part["text"], logprobs=[]),
                _event("response.content_part.done", seq, item_id=item["id"], output_index=k,
                       content_index=0, part=part),
                _event("response.output_item.done", seq, output_index=k, item=item)]

    try:
        while True:
            event = await queue.get()
            if "error" in event:
                error = P.APIError(event.get("status", 500), event["error"],
                                   type="server_error").body()["error"]
                yield _event("error", seq, code=error["type"], message=error["message"],
                             param=None)
                failed = {**shell, "status": "failed", "output": items.items,
                          "error": {"code": "server_error", "message": error["message"]}}
                yield _event("response.failed", seq, response=failed)
                break
            if "finish_reason" in event:
                finished = True
                if current is not None:
                    for e in close(current):
                        yield e
                out = {**shell, "status": "completed", "output": items.items,
                       "usage": _usage(work, event["completion_tokens"])}
                out["led"] = {**shell["led"], "explored": event["explored"]}
                if event["finish_reason"] == "length":
                    out["status"] = "incomplete"
                    out["incomplete_details"] = {"reason": "max_output_tokens"}
                    yield _event("response.incomplete", seq, response=out)
                else:
                    yield _event("response.completed", seq, response=out)
                break
            for kind, text in (("reasoning", event["reasoning"]), ("message", event["content"])):
                if not text:
                    continue
                if current is None or current["type"] != kind:
                    if current is not None:
                        for e in close(current):
                            yield e
                    current = items.open(kind)
                    k = len(items.items) - 1
                    blank = {**current, "content": [{**current["content"][0], "text": ""}],
                             "status": "in_progress"}
                    yield _event("response.output_item.added", seq, output_index=k, item=blank)
                    if kind == "message":
                        yield _event("response.content_part.added", seq, item_id=current["id"],
                                     output_index=k, content_index=0,
                                     part=blank["content"][0])
                k = items.items.index(current)
                current["content"][0]["text"] += text
                name = ("response.reasoning_text.delta" if kind == "reasoning"
                        else "response.output_text.delta")
                extra = {} if kind == "reasoning" else {"logprobs": []}
                yield _event(name, seq, item_id=current["id"], output_index=k, content_index=0,
                             delta=text, **extra)
            for call in event.get("tool_calls", []):
                if current is not None:
                    for e in close(current):
                        yield e
                    current = None
                item = items.call(call)
                k = len(items.items) - 1
                yield _event("response.output_item.added", seq, output_index=k,
                             item={**item, "arguments": "", "status": "in_progress"})
                yield _event("response.function_call_arguments.delta", seq, item_id=item["id"],
                             output_index=k, delta=item["arguments"])
                yield _event("response.function_call_arguments.done", seq, item_id=item["id"],
                             output_index=k, arguments=item["arguments"], name=item["name"])
                yield _event("response.output_item.done", seq, output_index=k, item=item)
    finally:
        if not finished:  # the client left (or the stream failed): free the slot
            scheduler.cancel(work)
