"""Decision engine: continuous batching, paged KV cache, prefix cache, sampling, CUDA graphs."""
from .engine import EngineConfig, EngineError, EngineStats, LLMEngine
from .request import FinishReason, ModalityInput, RequestStatus, TokenRecord
from .sampling import SamplingParams

__all__ = ["EngineConfig", "EngineError", "EngineStats", "LLMEngine", "FinishReason",
           "ModalityInput", "RequestStatus", "TokenRecord", "SamplingParams"]
