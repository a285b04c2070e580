"""What the apps run on: the shared model (one SD base, ControlNets swapped in) and the detectors, both
finding their weight files through the same `WeightFiles`."""
from __future__ import annotations

from dataclasses import dataclass, field

import annotator
from cldm.control_bank import ControlBank
from cldm.shared_model import SharedModel


@dataclass
class Backend:
    model: SharedModel
    bank: ControlBank = field(init=False)  # extra ControlNets for the multi-condition page

    def __post_init__(self) -> None:
        self.bank = ControlBank(self.model)

    @property
    def tiny(self) -> bool:
        return self.model.tiny

    def detector(self, name: str) -> annotator.Annotator:
        """The detector `name` on the model's device (random weights in tiny mode); the registry keeps one
        networked detector resident."""
        return annotator.load(name, device=str(self.model.device), random_init=self.model.tiny,
                              files=self.model.files)
