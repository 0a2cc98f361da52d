"""LLM calls as workflow steps: the built-in ``llm`` task type, its providers (an
OpenAI-compatible client and an offline simulator), streaming and telemetry."""

from .handler import LLMOptions, LLMService, default_provider, parse_options
from .providers import ChatRequest, Completion, OpenAIProvider, ProviderError
from .simulator import SimulatedProvider, SimulatorSettings
from .streaming import TokenStream, subscribe_tokens
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
    "TokenStream",
    "calls_frame",
    "default_provider",
    "parse_options",
    "read_calls",
    "render",
    "subscribe_tokens",
    "usage_frame",
]
