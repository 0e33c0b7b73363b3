"""phasemap: phase diagrams of parameter-symmetry breaking and restoration in trained networks."""

__version__ = "0.1.0"
