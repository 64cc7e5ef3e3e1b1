"""AVN-net serving: the core package shared by training, services, gateway and evaluation."""

__version__ = "0.1.0"  # the one statement of the version: pyproject.toml reads it, every result reports it
SOFTWARE_NAME = "AVN-net serving"  # how the results, the DICOM outputs and FHIR name this software
