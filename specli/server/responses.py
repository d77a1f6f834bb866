"""Response bodies in OpenAI's shapes (checked against the `openai` SDK's types), plus timings.

`timings` uses llama-server's field names where they exist (prompt_n, prompt_ms,
predicted_n, predicted_ms, predicted_per_second, draft_n, draft_n_accepted, cache_n),
so clients that parse them already keep working, and adds what speculation did:
rounds, acceptance rate, tokens per round, the K chosen per round (counts), rounds by
drafter, the draft model's prompt tokens evaluated, the time spent queued, and the
target's decode threads at the end (specli/threads.py lowers them while other processes
use the CPUs).
"""

from __future__ import annotations

import json
import time
import uuid

FINGERPRINT = "specli"


def timings(stats, reply, tally, queue_ms: float) -> dict:
    """One generation's timings, from the engine's Stats and the tally of its rounds."""
    # A prompt restored from a saved state (promptcache) took that restore's time instead.
    prompt_ms = 1000 * (stats.prompt_seconds + reply.restore_seconds)
    predicted_ms = 1000 * stats.decode_seconds
    n_prompt, n_out = reply.prompt_evaluated, stats.new_tokens
    return {
        "prompt_n": n_prompt,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / n_prompt if n_prompt else 0.0,
        "prompt_per_second": 1000 * n_prompt / prompt_ms if prompt_ms > 0 else 0.0,
        "predicted_n": n_out,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / n_out if n_out else 0.0,
        "predicted_per_second": 1000 * n_out / predicted_ms if predicted_ms > 0 else 0.0,
        "draft_n": stats.drafted,
        "draft_n_accepted": stats.accepted,
        "cache_n": reply.prompt_reused,
        # specli's own
        "rounds": stats.rounds,
        "acceptance_rate": stats.acceptance_rate,
        "tokens_per_round": stats.tokens_per_round,
        "k_counts": {str(k): n for k, n in sorted(tally.k_counts.items())},
        "rounds_by_drafter": dict(sorted(tally.by_drafter.items())),
        "draft_prompt_n": reply.draft_evaluated,
        "threads": reply.conv.target.threads_now,  # fewer than --threads: other processes were busy
        "queue_ms": queue_ms,
        **_prediction_timings(reply),
    }


def _prediction_timings(reply) -> dict:
    out = {}
    counts = reply.prediction_counts
    if counts is not None:
        out.update(prediction_draft_n=counts[0], prediction_draft_n_accepted=counts[1])
    counts = getattr(reply, "history_counts", None)
    if counts is not None:  # drafted from earlier requests' prompts and replies
        out.update(history_draft_n=counts[0], history_draft_n_accepted=counts[1])
    return out


class Ids:
    """The id, creation time and model name shared by a response and all its chunks."""

    def __init__(self, kind: str, model: str) -> None:
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model
        self.kind = kind

    def head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": FINGERPRINT}


def logprobs_body(lps) -> dict | None:
    """OpenAI's chat `logprobs` object for engine.TokenLogprob items (None: not asked)."""
    if lps is None:
        return None

    def entry(b: bytes, lp: float) -> dict:
        return {"token": b.decode("utf-8", "replace"), "logprob": lp, "bytes": list(b)}

    return {"content": [{**entry(t.bytes, t.logprob),
                         "top_logprobs": [entry(b, lp) for _, b, lp in t.top]} for t in lps],
            "refusal": None}


def legacy_logprobs(lps, offset: int = 0) -> dict | None:
    """The completions endpoint's `logprobs` object (tokens, token_logprobs, top_logprobs
    as {token: logprob}, text_offset from `offset`) for engine.TokenLogprob items."""
    if lps is None:
        return None
    tokens, offsets = [], []
    for t in lps:
        offsets.append(offset)
        text = t.bytes.decode("utf-8", "replace")
        tokens.append(text)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": [t.logprob for t in lps],
            "top_logprobs": [{b.decode("utf-8", "replace"): lp for _, b, lp in t.top}
                             for t in lps],
            "text_offset": offsets}


def completion_body(ids: Ids, finished) -> dict:
    """The non-streamed response."""
    if ids.kind == "chat":
        message = {"role": "assistant", "content": finished.text}
        if finished.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for c in finished.tool_calls]
        choice = {"index": 0, "message": message, "finish_reason": finished.finish_reason,
                  "logprobs": logprobs_body(finished.logprobs)}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": finished.text, "finish_reason": finished.finish_reason,
                  "logprobs": legacy_logprobs(finished.logprobs)}
        obj = "text_completion"
    return {**ids.head(obj), "choices": [choice], "usage": finished.usage,
            "timings": finished.timings}


def chunk(ids: Ids, text: str | None = None, *, first: bool = False,
          finish_reason: str | None = None, extra: dict | None = None, logprobs=None,
          tool_call: dict | None = None, offset: int = 0) -> dict:
    """One streamed chunk: a text delta, a tool call's delta (its head: index, id, type and
    name; then fragments of its arguments), the opening role, or the closing finish_reason."""
    if ids.kind == "chat":
        delta = {"role": "assistant", "content": ""} if first else (
            {"tool_calls": [tool_call]} if tool_call is not None else
            {"content": text} if text is not None else {})
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason,
                  "logprobs": logprobs_body(logprobs)}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason,
                  "logprobs": legacy_logprobs(logprobs, offset)}
        obj = "text_completion"
    return {**ids.head(obj), "choices": [choice], **(extra or {})}


def usage_chunk(ids: Ids, finished) -> dict:
    """With stream_options.include_usage: the last chunk, no choices, usage and timings."""
    obj = "chat.completion.chunk" if ids.kind == "chat" else "text_completion"
    return {**ids.head(obj), "choices": [], "usage": finished.usage, "timings": finished.timings}


def infill_body(finished, job, model: str, n_ctx: int, index: int = 0) -> dict:
    """llama-server's native /infill answer (compact JSON, one line: llama.vim reads it
    line by line and looks for `"content":"`), cut to `response_fields` when asked:
    each "a/b" path is given at the top level under that name, as llama-server does."""
    f, t = job.infill, finished.timings
    settings = {"n_ctx": n_ctx, "n_predict": job.spec.max_tokens, "seed": job.spec.seed,
                "temperature": job.sampling.temperature, "top_k": job.sampling.top_k,
                "top_p": job.sampling.top_p, "min_p": job.sampling.min_p,
                "stream": job.stream, "stop": list(job.stop), "n_indent": f.n_indent,
                "t_max_predict_ms": f.t_max_predict_ms,
                "speculative": {"k": job.spec.k, "drafter": job.drafter,
                                "strict": job.spec.strict},
                "infill_sampler": f.infill_sampler,
                "samplers_not_applied": list(finished.ignored_samplers)}
    body = {"index": index, "content": finished.text or "",
            "tokens": list(finished.tokens) if f.return_tokens else [],
            "id_slot": 0, "stop": True, "model": model,
            "tokens_predicted": finished.usage["completion_tokens"],
            "tokens_evaluated": finished.usage["prompt_tokens"],
            "generation_settings": settings, "prompt": finished.prompt_text,
            "has_new_line": "\n" in (finished.text or ""), "truncated": finished.truncated,
            "stop_type": finished.stop_type, "stopping_word": finished.stopping_word,
            "tokens_cached": finished.tokens_cached, "timings": t}
    if f.response_fields is None:
        return body
    out = {}
    for path in f.response_fields:
        value, found = body, bool(path)
        for part in path.split("/"):
            if isinstance(value, dict) and part in value:
                value = value[part]
            else:
                found = False
                break
        if found:
            out[path] = value
    return out


def infill_chunk(text: str, n_predicted: int, n_evaluated: int) -> dict:
    """One streamed piece of a native /infill answer (the last is infill_body's, stop true)."""
    return {"index": 0, "content": text, "tokens": [], "stop": False, "id_slot": 0,
            "tokens_predicted": n_predicted, "tokens_evaluated": n_evaluated}


def sse(data: dict | str) -> bytes:
    """One Server-Sent Event (compact JSON)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False,
                                                            separators=(",", ":"))
    return f"data: {payload}\n\n".encode("utf-8")


DONE = sse("[DONE]")


def models_body(model_id: str, created: int, info: dict) -> dict:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                        "owned_by": "specli", "meta": info}]}
