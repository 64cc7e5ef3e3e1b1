"""AVN-net serving: the core package shared by training, services, gateway and evaluation."""

__version__ = "0.1.0"
