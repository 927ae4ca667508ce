"""Training engine: RobustModel, temporal ensemble, global pruning."""
