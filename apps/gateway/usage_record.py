"""The usage record: what one gateway request consumed, as it crosses from the gateway (which
builds it) through the usage buffer to the worker (``apps.billing``, which writes the
``UsageRecord`` row). One type for both sides; billing imports it from here, never the reverse.

Wire format: a flat JSON object whose keys are this dataclass's fields, in this order (orjson
serializes the dataclass as is). ``from_json`` accepts what ``to_json`` writes and raises
``ValueError``, ``KeyError`` or ``TypeError`` for anything malformed; a missing optional field
reads as null, a missing error code as empty, missing token counts as 0, a missing ``seq`` as
final.

Versions: a request may have several records with the same ``request_id``: checkpoints of a
stream in flight (``seq`` 1, 2, ...; each says what was delivered so far and what the record
would be if nothing else came: a gateway that died mid-answer) and the final one
(``FINAL_SEQ``). A higher ``seq`` supersedes a lower one, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

FINAL_SEQ = 2**31 - 1  # the seq of a request's final record (checkpoints count up from 1)


@dataclass(frozen=True, slots=True)
class UsageRecordData:
    request_id: str  # the idempotency key of the UsageRecord row
    organization_id: int
    api_key_id: int | None
    model_code_id: int | None  # the model code's primary key (None: unknown model name)
    model_code: str  # its name, or the name the client asked for
    instance_id: str | None  # UUID of the instance that answered last
    endpoint: str  # "chat", "completions", "embeddings"
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    status_code: int  # returned to the client (499: the client went away mid-stream)
    error_code: str
    attempts: int
    latency_ms: float
    ttft_ms: float | None
    started_at: float  # epoch seconds
    seq: int = FINAL_SEQ  # checkpoints 1, 2, ...; FINAL_SEQ for the final record

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, raw: bytes) -> UsageRecordData:
        data: dict[str, Any] = orjson.loads(raw)  # JSONDecodeError is a ValueError
        return cls(
            request_id=data["request_id"],
            organization_id=data["organization_id"],
            api_key_id=data.get("api_key_id"),
            model_code_id=data.get("model_code_id"),
            model_code=data["model_code"],
            instance_id=data.get("instance_id"),
            endpoint=data["endpoint"],
            stream=data["stream"],
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            completion_tokens=int(data.get("completion_tokens") or 0),
            status_code=data["status_code"],
            error_code=data.get("error_code") or "",
            attempts=data["attempts"],
            latency_ms=data["latency_ms"],
            ttft_ms=data.get("ttft_ms"),
            started_at=float(data["started_at"]),
            seq=int(data.get("seq") or FINAL_SEQ),
        )

    @property
    def final(self) -> bool:
        return self.seq == FINAL_SEQ
