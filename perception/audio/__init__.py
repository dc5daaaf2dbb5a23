"""perception/audio: speech in, decoder-ready embeddings or text out.

Pipeline: PCM (any 8-48 kHz rate, mono or stereo; `decode_audio` reads WAV/FLAC/OGG/... bytes)
-> 16 kHz (libsoxr HQ) -> 30 s windows -> Whisper log-mel (80 or 128 bins, n_fft 400, hop 160)
-> Whisper encoder -> per deployment, one of two modes:

- ``embed``: a low-rank adapter maps encoder states to the decoder width
  ([n_tokens, decoder_hidden] float32); the decision stage places them at the audio
  placeholder tokens of the prompt.
- ``transcribe``: Whisper's own decoder, greedy, timestamps off, language/task tokens per
  generation_config.json (or forced by the deployment); the text replaces the audio part.

Checkpoint layout (inside the model directory; a plain Hugging Face Whisper directory works
too, as the audio directory itself)::

    MODEL_DIR/audio/
      config.json              HF WhisperConfig (model_type "whisper")
      model.safetensors        HF tensor names: model.encoder.*, model.decoder.*
                               (or sharded with model.safetensors.index.json)
      tokenizer.json           HF `tokenizers` file (transcribe mode)
      generation_config.json   decoder_start_token_id, lang_to_id, task_to_id,
                               no_timestamps_token_id, suppress_tokens, max_length, ...
      preprocessor_config.json optional, informative (feature_size = num_mel_bins)
      adapter_config.json      embed mode: {encoder_d_model, rank, decoder_hidden, pooling,
                               activation: null|"gelu", prefix: "audio_adapter."}
      adapter.safetensors      embed mode: audio_adapter.down.weight [rank, d_model],
                               audio_adapter.up.weight [decoder_hidden, rank],
                               audio_adapter.up.bias [decoder_hidden]
      onnx/<key>/              ONNX exports cached by the onnx backend (if writable)

Only the tensors a mode uses are read (the decoder's stay on disk in embed mode).
Entry point for the stage::

    pipe = AudioPipeline.from_dir(model_dir, mode="embed", backend="onnx")
    result = pipe.process(pcm, sample_rate)      # AudioResult: .embeddings / .text
    for window in pipe.iter_windows(chunks, sample_rate): ...   # streaming, 30 s windows

Bad input raises AudioInputError (message fit for an HTTP 400); a bad checkpoint raises
AudioModelError.
"""
from .decode import DEFAULT_MAX_SECONDS, decode_audio, prepare_pcm
from .errors import AudioInputError, AudioModelError
from .pipeline import AudioPipeline, AudioResult, AudioStream, AudioWindow, resolve_audio_dir


def __getattr__(name):
    # The writer needs torch; importing this package (e.g. for decode_audio in the gateway)
    # must not, so it loads on first use.
    if name == "write_default_audio_checkpoint":
        from .writer import write_default_audio_checkpoint
        return write_default_audio_checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AudioInputError", "AudioModelError", "AudioPipeline", "AudioResult", "AudioStream",
    "AudioWindow", "DEFAULT_MAX_SECONDS", "decode_audio", "prepare_pcm", "resolve_audio_dir",
    "write_default_audio_checkpoint",
]
