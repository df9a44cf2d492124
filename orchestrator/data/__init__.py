"""The data layer: datasets (registry, loading), seeded random streams, batch samplers and
the batch stream (order, neighbour batches, augmented views). Lowest layer of orchestrator."""
