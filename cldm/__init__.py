"""ControlNet 1.0 model core (ControlNet, ControlLDM, config), sampling, loading and the generation pipeline."""
