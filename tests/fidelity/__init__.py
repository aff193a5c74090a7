"""Shadow fidelity checks, the controller, the store, the fleet state and the dashboard."""
