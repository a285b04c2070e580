"""Every weight file the suite uses and where it is found: the table (`weights.table`) and the lookup
(`weights.files`). Both the diffusion engine (`cldm`) and the detectors (`annotator`) use this package; it
imports neither of them."""
from weights.files import WeightFiles, WeightsUnavailable
from weights.table import WEIGHTS, WeightFile

__all__ = ["WEIGHTS", "WeightFile", "WeightFiles", "WeightsUnavailable"]
