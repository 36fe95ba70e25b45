"""From a model to an isotropic volume: geometry, block plan, kernels, scheduling, clusters."""
