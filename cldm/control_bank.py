"""Several ControlNets resident at once, for the multi-condition page, next to the shared model.

    bank = ControlBank(shared)                                # shared: cldm.shared_model.SharedModel
    with bank.hold(["cn10_canny", "cn10_depth"]) as (model, nets):
        units = [ControlUnit(nets["cn10_canny"], canny_map), ControlUnit(nets["cn10_depth"], depth_map)]
        generate_multi(model, units, params, mode)

Weights are read only through the shared model (`shared.activate(key)`): its file reading, its LRU cache of
control state dicts, its load counters and, in tiny mode, its random ControlNets seeded by the key. The bank
copies them into ControlNets of its own, each built from the base config's ControlNet config.

Memory stays bounded:
* a request uses at most `MAX_UNITS` (3) distinct weights;
* the last of them is served by the base model's own ControlNet (what `shared.activate` swaps in), so the
  bank needs at most `MAX_UNITS - 1` ControlNets of its own for one request;
* the bank keeps at most `capacity` of them (default `MAX_UNITS - 1`), dropping the least recently used
  (its module is reused for the next weights, so no new memory is taken);
* in low-memory mode the bank's ControlNets wait on the CPU and are on the accelerator only while held.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from cldm.controlnet import ControlNet
from weights.table import WEIGHTS

MAX_UNITS = 3


class ControlBankError(ValueError):
    """A request the bank cannot serve (too many weights, unknown weights); the message says why."""


class ControlBank:
    def __init__(self, shared, capacity: int = MAX_UNITS - 1):
        if capacity < MAX_UNITS - 1:
            raise ValueError(f"capacity must be at least {MAX_UNITS - 1} (a request of {MAX_UNITS} weights needs that many)")
        self.shared = shared
        self.capacity = capacity
        self.copies = 0  # times weights were copied into one of the bank's ControlNets (bank misses)
        self._nets: OrderedDict[str, nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, keys: Sequence[str], loras: Sequence[tuple[str, float]] = ()
             ) -> Iterator[tuple[nn.Module, dict[str, nn.Module]]]:
        """The base model (held exclusively, with `loras` merged, as `shared.activate` does) and one ControlNet
        per distinct key."""
        distinct = list(dict.fromkeys(keys))
        if not distinct:
            raise ControlBankError("at least one ControlNet is needed")
        if len(distinct) > MAX_UNITS:
            raise ControlBankError(f"at most {MAX_UNITS} different ControlNet weights at once, got {len(distinct)}")
        unknown = [k for k in distinct if k not in WEIGHTS]
        if unknown:
            raise ControlBankError(f"unknown ControlNet weights {unknown}")
        with self._lock:
            # The weights already in the base model need no copy: serve them from there if asked for.
            own = self.shared.active if self.shared.active in distinct else distinct[-1]
            others = [k for k in distinct if k != own]
            nets = {key: self._net(key) for key in others}
            for key, net in nets.items():
                net.global_average_pooling = WEIGHTS[key].global_average_pooling
            with self.shared.activate(own, loras) as model:
                device = model.device
                for net in nets.values():
                    net.to(device)
                nets[own] = model.control_model
                try:
                    yield model, nets
                finally:
                    if self.shared.low_memory:
                        for key in others:
                            nets[key].to("cpu")

    def _net(self, key: str) -> nn.Module:
        """The bank's ControlNet holding `key` (copied from the shared model on a miss; LRU order updated)."""
        net = self._nets.get(key)
        if net is not None:
            self._nets.move_to_end(key)
            return net
        with self.shared.activate(key) as model:
            if len(self._nets) >= self.capacity:
                _, net = self._nets.popitem(last=False)  # reuse the least recently used module
            else:
                net = ControlNet(model.config.control).requires_grad_(False).eval()
            source = model.control_model
            net.to(device=next(source.parameters()).device, dtype=model.dtype)
            with torch.no_grad():
                net.load_state_dict(source.state_dict())
        self._nets[key] = net
        self.copies += 1
        return net

    def status(self) -> dict:
        return {"bank_controls": list(self._nets), "bank_copies": self.copies, "bank_capacity": self.capacity}
