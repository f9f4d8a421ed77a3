"""The constants of one simulated pod, with defaults modelled on a real GPU.

Reference deployment: **Llama-3.1-8B-Instruct in bf16 on one H100 SXM5 80 GB, served by vLLM V1
with its defaults for the OpenAI server**. Where each default comes from:

- Model shape (Llama 3.1 8B ``config.json``): 8.03 B parameters, 32 layers, 8 KV heads of
  128 dims (GQA), 131,072-token context. KV per token = 2 (K, V) x 32 x 8 x 128 x 2 bytes =
  128 KiB, so a 16-token block is 2 MiB.
- ``kv_num_blocks = 27_500`` (440,000 tokens): 80 GB shows as 79.6 GiB; vLLM's
  ``gpu_memory_utilization`` 0.9 leaves 71.7 GiB; the weights take 14.99 GiB (vLLM logs
  "Loading model weights took 14.9888 GB" for this model, vllm-project/vllm#10517); about
  3 GiB go to activations and non-torch memory (a profiling table for this model on an
  H100 NVL 94 GB reports 542,960 KV tokens: 0.9 x 93.6 - 14.99 - 66.3 = 2.95 GiB).
  71.7 - 15.0 - 3.0 = 53.7 GiB / 2 MiB = 27,500 blocks.
- ``max_num_seqs = 1024`` and ``max_num_batched_tokens = 8192``: vLLM's
  ``EngineArgs.get_batch_defaults`` (``vllm/engine/arg_utils.py``) for GPUs with >= 70 GiB
  that are not A100, in the ``OPENAI_API_SERVER`` usage context.
- ``decode_s_per_token = 6.2 ms``, the step time at batch 1: every step reads all weights,
  16.06 GB at the H100's 3.35 TB/s HBM3 (NVIDIA datasheet) times 0.77, the share of peak
  bandwidth vLLM reaches for this model's batch-1 decode (75 tokens/s on an A100 40 GB,
  johnmusgrave.com, "vLLM throughput-latency sweep on NVIDIA A100", vLLM 0.23).
- ``kv_read_s_per_token = 51 ns``: decode attention reads each context token's 128 KiB of
  KV once per step, at the same 0.77 x 3.35 TB/s. This is what makes a decode step slower
  as the batch (and its contexts) grow: 256 sequences of 1,500 tokens add 19.6 ms.
- ``prefill_s_per_token = 32.5 us`` (30,800 tokens/s): 2 x 8.03 GFLOP per token at the
  H100's 989 dense bf16 TFLOPS and an assumed 50 % model-FLOPs utilisation.
- ``decode_s_per_seq = 0``: an optional linear per-sequence cost (sampling, output
  processing); the roofline terms already make decode cost grow with batch size.
- ``base_latency_s = 2 ms``: an assumption for the API server's own work per request
  (parsing, tokenising, detokenising); it delays a request but does not occupy the GPU.
- LoRA (``vllm_sim.lora``): ``max_loras = 1`` and ``max_cpu_loras = None`` (meaning
  ``max_loras``) are vLLM's defaults (``vllm/config/lora.py``). The load times assume a
  rank-16 adapter on all seven projections of every layer (vLLM's default
  ``--max-lora-rank`` is 16): per layer 16 x (q 4096+4096, k 4096+1024, v 4096+1024,
  o 4096+4096, gate, up and down 4096+14336 each) = 1.31 M parameters, x 32 layers =
  41.9 M, 84 MB in bf16. ``lora_load_s = 50 ms`` reads it from local NVMe (about
  2 GB/s: 42 ms) and builds its tensors in host memory; ``lora_activate_s = 3 ms`` copies
  it over PCIe to its GPU slot (about 30 GB/s from pinned memory: 2.8 ms; TensorRT-LLM
  quotes 1-2 ms for its own CPU-to-GPU adapter copy). Both are estimates from bandwidth,
  not measurements; a network file system can make the first ten times longer.

One engine step with ``T`` scheduled tokens, ``D`` decoding sequences and ``C`` context
tokens among them takes (a roofline: whichever of memory and compute is slower)::

    max(decode_s_per_token + C * kv_read_s_per_token,  T * prefill_s_per_token)
        + D * decode_s_per_seq

Not modelled: attention FLOPs during prefill (about +25 % at 8k context), CUDA-graph
padding, speculative decoding, and the CPU/GPU overlap of vLLM's async scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SimConfig"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Constants of one simulated pod; see the module docstring for the defaults' sources."""

    # Requests running at once (vLLM --max-num-seqs); the rest wait in FIFO order.
    max_num_seqs: int = 1024
    # Tokens one step may process (vLLM --max-num-batched-tokens): decodes count 1 each,
    # prefill chunks take the rest.
    max_num_batched_tokens: int = 8192
    kv_num_blocks: int = 27_500
    kv_block_size: int = 16  # tokens per block
    # Compute time per token a step processes (prefill chunks and decode tokens alike).
    prefill_s_per_token: float = 0.0000325
    # Memory floor of every step (all weights read once): the decode step time at batch 1.
    decode_s_per_token: float = 0.0062
    # Memory time per context token of each decoding sequence, per step.
    kv_read_s_per_token: float = 0.000000051
    # Optional extra time per decoding sequence per step.
    decode_s_per_seq: float = 0.0
    # Per-request front-end delay before the request reaches the scheduler.
    base_latency_s: float = 0.002
    default_max_tokens: int = 16
    # Reported by /tokenize and /v1/models; prompts are not truncated or refused.
    max_model_len: int = 131_072
    # Multiplies every sleep; 0 runs steps back to back without sleeping. Latencies in
    # /metrics are in simulated (unscaled) seconds either way.
    time_scale: float = 1.0
    # Emit vllm:gpu_cache_usage_perc (vLLM before v0.10) instead of vllm:kv_cache_usage_perc.
    legacy_metric_names: bool = False
    # LoRA adapters on the GPU at once (vLLM --max-loras): also the most distinct
    # adapters one step may run.
    max_loras: int = 1
    # Adapters kept in host memory (vLLM --max-cpu-loras); None means max_loras.
    max_cpu_loras: int | None = None
    # Reading an adapter that is not in host memory from disk (before its activation).
    lora_load_s: float = 0.05
    # Copying an adapter from host memory into a GPU slot.
    lora_activate_s: float = 0.003

    def __post_init__(self) -> None:
        for name in (
            "max_num_seqs", "max_num_batched_tokens", "kv_num_blocks", "kv_block_size",
            "default_max_tokens", "max_model_len", "max_loras",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "prefill_s_per_token", "decode_s_per_token", "kv_read_s_per_token",
            "decode_s_per_seq", "base_latency_s", "time_scale", "lora_load_s",
            "lora_activate_s",
        ):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})"
            )

    @property
    def cpu_loras(self) -> int:
        """Adapters kept in host memory: ``max_cpu_loras``, else ``max_loras``."""
        return self.max_loras if self.max_cpu_loras is None else self.max_cpu_loras

    def step_time_s(self, tokens: int, decode_seqs: int, context_tokens: int) -> float:
        """Simulated duration of one step (see the module docstring)."""
        memory_s = self.decode_s_per_token + context_tokens * self.kv_read_s_per_token
        compute_s = tokens * self.prefill_s_per_token
        return max(memory_s, compute_s) + decode_seqs * self.decode_s_per_seq
