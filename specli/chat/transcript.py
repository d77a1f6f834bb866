"""Chat transcripts: the conversation as JSON (`specli chat --save/--load`, `/save`)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from specli.errors import UsageError

FORMAT = "specli-chat"


@dataclass
class Transcript:
    """A conversation: the system prompt, every message, and where the context starts.

    `messages` holds user/assistant messages only (dicts with role, content and, for a
    reply cut by Ctrl-C, interrupted=True). Messages before `start` were dropped from
    the context (overflow or /reset) but are kept here, so nothing typed is lost.
    """

    system: str | None = None
    messages: list[dict] = field(default_factory=list)
    start: int = 0

    def to_json(self) -> dict:
        head = [{"role": "system", "content": self.system}] if self.system else []
        body = [{k: v for k, v in m.items() if k in _SAVED_KEYS} for m in self.messages]
        return {"format": FORMAT, "version": 1, "messages": head + body,
                "context_start": len(head) + self.start}


_SAVED_KEYS = ("role", "content", "interrupted")


def load_transcript(path: Path) -> Transcript:
    """Read a transcript written by --save or /save (or a bare OpenAI-style message list)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"transcript not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read transcript {path}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"transcript {path} is not valid JSON: {e}") from None
    raw = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(raw, list):
        raise UsageError(f"transcript {path} has no 'messages' list")
    system, messages = None, []
    for i, m in enumerate(raw):
        if not (isinstance(m, dict) and isinstance(m.get("content"), str)
                and m.get("role") in ("system", "user", "assistant")):
            raise UsageError(f"transcript {path}: message {i} needs a role (system, user or "
                             "assistant) and a text content")
        if m["role"] == "system":
            if i:
                raise UsageError(f"transcript {path}: only the first message may be a system prompt")
            system = m["content"]
        else:
            messages.append({k: v for k, v in m.items() if k in _SAVED_KEYS})
    start = data.get("context_start", 0) if isinstance(data, dict) else 0
    start = start - (1 if system is not None else 0) if isinstance(start, int) else 0
    return Transcript(system, messages, min(max(start, 0), len(messages)))


def save_transcript(path: Path, transcript: Transcript) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a transcript."""
    path = Path(path)
    text = json.dumps(transcript.to_json(), ensure_ascii=False, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


