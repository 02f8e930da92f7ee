"""One error family. Every message says what is wrong and what to do about it."""


class EdgeInferError(Exception):
    """Base of every error edgeinfer raises on purpose."""


class SourceError(EdgeInferError):
    """A weights source (folder, GGUF, preset, hub id) cannot be read or is not supported."""


class ExportError(EdgeInferError):
    """An export cannot be written (existing output, disk full, bad options)."""


class PackageError(EdgeInferError):
    """An exported package is missing, corrupt, or does not fit the request."""


class BackendError(EdgeInferError):
    """A backend is unknown, not available here, or cannot run the package."""


class GenerationError(EdgeInferError):
    """Generation cannot go on (empty prompt, context full, bad token ids)."""


class EvalError(EdgeInferError):
    """An evaluation cannot run (text too short for its chunks, a reference with another tokenizer)."""


class SamplingError(EdgeInferError, ValueError):
    """A sampling parameter is out of range."""


def last_line(exc: BaseException) -> str:
    """One line of a library's exception for our own message: native libraries put the cause last."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else type(exc).__name__


def check_fits(tokens: int, capacity: int) -> None:
    """The one "context full" check: TOKENS must fit a CAPACITY-token context."""
    if tokens > capacity:
        raise GenerationError(
            f"{tokens} tokens do not fit the {capacity}-token context: start a new conversation, shorten the prompt, "
            "or export the package with a larger --context"
        )
