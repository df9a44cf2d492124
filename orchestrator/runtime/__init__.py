"""Ray and the machine: the sweep driver, the Tune callback, Ray sessions, GPU packing,
shared-storage checks and preflight. The only layer (with the CLI) that imports Ray."""
