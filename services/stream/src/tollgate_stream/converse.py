"""Bedrock Converse shapes on the AppSync chat channel: content blocks and tool configuration
in (as the contract's v2 request fields), streamed tool calls out."""

from __future__ import annotations

import json
from typing import Any

from tollgate_core.contracts import ReplyChunkV1, ReplyChunkV2

_FORMATS = {"png", "jpeg", "gif", "webp"}


def block(value: Any) -> Any:
    """A Converse content block as the contract's (``{"text"}`` stays text)."""
    if not isinstance(value, dict):
        return value
    if "image" in value:
        image = value["image"] or {}
        fmt = image.get("format")
        if fmt not in _FORMATS:
            raise ValueError("image.format must be png, jpeg, gif or webp")
        source = image.get("source") or {}
        if "bytes" not in source:
            raise ValueError("image.source.bytes (base64) is required")
        return {"type": "image", "media_type": f"image/{fmt}", "data": source["bytes"]}
    if "toolUse" in value:
        use = value["toolUse"] or {}
        return {
            "type": "tool_use",
            "id": use.get("toolUseId"),
            "name": use.get("name"),
            "input": use.get("input", {}),
        }
    if "toolResult" in value:
        return _tool_result(value["toolResult"] or {})
    if "text" in value:
        return {"type": "text", "text": value["text"]}
    raise ValueError(f"unsupported content block {sorted(value)[:1]}")


def _tool_result(result: dict[str, Any]) -> dict[str, Any]:
    parts: list[str] = []
    for item in result.get("content") or ():
        if isinstance(item, dict) and "text" in item:
            parts.append(str(item["text"]))
        elif isinstance(item, dict) and "json" in item:
            parts.append(json.dumps(item["json"], separators=(",", ":")))
        else:
            raise ValueError("toolResult.content holds text or json blocks")
    return {
        "type": "tool_result",
        "tool_use_id": result.get("toolUseId"),
        "content": "".join(parts),
        "is_error": result.get("status") == "error",
    }


def _tool_choice(choice: Any) -> Any:
    if not isinstance(choice, dict) or len(choice) != 1:
        raise ValueError("toolChoice is one of auto, any or tool")
    if "auto" in choice:
        return {"mode": "auto"}
    if "any" in choice:
        return {"mode": "required"}
    if "tool" in choice:
        return {"mode": "tool", "name": (choice["tool"] or {}).get("name")}
    raise ValueError("toolChoice is one of auto, any or tool")


def normalize(value: dict[str, Any]) -> dict[str, Any]:
    """The inbound event with Converse fields turned into the contract's."""
    out = dict(value)
    messages = out.get("messages")
    if isinstance(messages, list):
        out["messages"] = [
            {**m, "content": [block(b) for b in m.get("content") or ()]}
            if isinstance(m, dict) and isinstance(m.get("content"), list)
            else m
            for m in messages
        ]
    config = out.pop("toolConfig", None)
    if isinstance(config, dict):
        out["toolConfig"] = [
            {
                "name": (t.get("toolSpec") or {}).get("name"),
                "description": (t.get("toolSpec") or {}).get("description", ""),
                "input_schema": ((t.get("toolSpec") or {}).get("inputSchema") or {}).get(
                    "json", {"type": "object"}
                ),
            }
            for t in config.get("tools") or ()
            if isinstance(t, dict)
        ]
        if config.get("toolChoice") is not None:
            out["tool_choice"] = _tool_choice(config["toolChoice"])
    elif config is not None:
        raise ValueError("toolConfig must be an object")
    inference = out.pop("inferenceConfig", None)
    if isinstance(inference, dict):
        for source, target in (
            ("maxTokens", "maxTokens"),
            ("temperature", "temperature"),
            ("topP", "top_p"),
            ("stopSequences", "stop"),
        ):
            if source in inference:
                out[target] = inference[source]
    return out


def chunk_events(reply: ReplyChunkV1 | ReplyChunkV2) -> list[dict[str, Any]]:
    """What one reply chunk is on a ConverseStream: a text delta, or a tool call's start
    and its input pieces."""
    call = reply.tool_call if isinstance(reply, ReplyChunkV2) else None
    if call is None:
        return [{"contentBlockDelta": {"delta": {"text": reply.text}, "contentBlockIndex": 0}}]
    events: list[dict[str, Any]] = []
    if call.id is not None or call.name is not None:
        start = {"toolUse": {"toolUseId": call.id, "name": call.name}}
        events.append({"contentBlockStart": {"start": start, "contentBlockIndex": call.block}})
    if call.arguments:
        delta = {"toolUse": {"input": call.arguments}}
        events.append({"contentBlockDelta": {"delta": delta, "contentBlockIndex": call.block}})
    return events
