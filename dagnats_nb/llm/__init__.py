"""LLM calls as workflow steps: the built-in ``llm`` task type, its providers (an
OpenAI-compatible client and an offline simulator), the chunks of streaming steps and
telemetry. Subscribing to a step's tokens is the engine's: ``eng.subscribe_tokens``,
``run.stream``."""

from .handler import LLMOptions, LLMService, default_provider, parse_options
from .providers import ChatRequest, Completion, OpenAIProvider, ProviderError
from .simulator import SimulatedProvider, SimulatorSettings
from .streaming import decode_chunk, ends_stream, token_of
from .telemetry import SUBJECT, calls_frame, read_calls, usage_frame
from .templates import TemplateError, render

__all__ = [
    "SUBJECT",
    "ChatRequest",
    "Completion",
    "LLMOptions",
    "LLMService",
    "OpenAIProvider",
    "ProviderError",
    "SimulatedProvider",
    "SimulatorSettings",
    "TemplateError",
    "calls_frame",
    "decode_chunk",
    "default_provider",
    "ends_stream",
    "parse_options",
    "read_calls",
    "render",
    "token_of",
    "usage_frame",
]
