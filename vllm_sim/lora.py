"""LoRA adapter residency of one simulated pod: GPU slots and a CPU cache, both LRU.

Modelled on vLLM's ``LRUCacheWorkerLoRAManager`` (``vllm/lora/worker_manager.py``):

- ``max_loras`` GPU slots. An engine step may run requests of at most that many distinct
  adapters (the scheduler skips a waiting request whose adapter would exceed it; that
  rule lives in :mod:`vllm_sim.engine`). Before the step runs, every adapter it uses must
  sit in a slot; a missing one takes the slot of the least recently used adapter that the
  step does not use (an idle one).
- ``max_cpu_loras`` adapters kept in host memory (vLLM's default: ``max_loras``). An
  adapter found there is copied to its slot (``activate_s``); one that is not is read
  from disk first (``load_s``), evicting the least recently used adapter the step does
  not use when the cache is full.

vLLM does this inside the model runner, synchronously, before the forward pass: a load
stalls the whole step, so every request batched with it waits too. :meth:`prepare`
returns that stall in simulated seconds and the engine adds it to the step.

What vLLM's ``vllm:lora_requests_info`` reports is not residency but the adapters of
running and waiting *requests*; the engine counts those. Residency is only visible
here, in ``/sim/state`` and in the load counters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["LoraSlots", "LoraStats"]


@dataclass(frozen=True, slots=True)
class LoraStats:
    """The adapter counters and what is resident now (least recently used first)."""

    loads_from_disk: int  # read from disk into the CPU cache, then copied to a GPU slot
    loads_from_cpu: int  # copied to a GPU slot from the CPU cache
    gpu_evictions: int
    on_gpu: tuple[str, ...]
    on_cpu: tuple[str, ...]

    @property
    def loads(self) -> int:
        """Every load into a GPU slot, wherever the adapter came from."""
        return self.loads_from_disk + self.loads_from_cpu


class LoraSlots:
    """GPU slots and CPU cache of one pod; see the module docstring. Nothing awaits."""

    def __init__(
        self, max_loras: int, max_cpu_loras: int, *, load_s: float, activate_s: float
    ) -> None:
        if max_loras < 1 or max_cpu_loras < max_loras:
            raise ValueError(
                f"need max_loras >= 1 and max_cpu_loras >= max_loras, "
                f"got {max_loras} and {max_cpu_loras}"
            )
        if load_s < 0 or activate_s < 0:
            raise ValueError(f"load times must be >= 0, got {load_s} and {activate_s}")
        self.max_loras = max_loras
        self.max_cpu_loras = max_cpu_loras
        self.load_s = load_s
        self.activate_s = activate_s
        # Least recently used first.
        self._gpu: OrderedDict[str, None] = OrderedDict()
        self._cpu: OrderedDict[str, None] = OrderedDict()
        self._from_disk = 0
        self._from_cpu = 0
        self._gpu_evictions = 0

    def stats(self) -> LoraStats:
        return LoraStats(
            loads_from_disk=self._from_disk,
            loads_from_cpu=self._from_cpu,
            gpu_evictions=self._gpu_evictions,
            on_gpu=tuple(self._gpu),
            on_cpu=tuple(self._cpu),
        )

    def on_gpu(self, adapter: str) -> bool:
        return adapter in self._gpu

    def prepare(self, adapters: Collection[str]) -> float:
        """Make every adapter of one step resident on the GPU; return the seconds it took.

        Raises ValueError for more adapters than slots: the scheduler must not allow it.
        """
        if len(adapters) > self.max_loras:
            raise ValueError(f"{len(adapters)} adapters in one step, {self.max_loras} slots")
        # Touch the step's adapters first, so that no eviction below can pick one of them.
        for name in adapters:
            if name in self._gpu:
                self._gpu.move_to_end(name)
            if name in self._cpu:
                self._cpu.move_to_end(name)
        cost = 0.0
        for name in adapters:
            if name in self._gpu:
                continue
            if name in self._cpu:
                self._from_cpu += 1
            else:
                if len(self._cpu) >= self.max_cpu_loras:
                    victim = next(iter(self._cpu))
                    del self._cpu[victim]
                    if victim in self._gpu:
                        # Dropped from host memory, vLLM drops it from its slot as well.
                        del self._gpu[victim]
                        self._gpu_evictions += 1
                self._cpu[name] = None
                self._from_disk += 1
                cost += self.load_s
            if len(self._gpu) >= self.max_loras:
                self._gpu.popitem(last=False)
                self._gpu_evictions += 1
            self._gpu[name] = None
            cost += self.activate_s
        return cost
