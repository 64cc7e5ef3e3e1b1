"""TorchServe entry point of the multi-label notes classifier (wire format: services/README.md).

Probabilities are the model's own; the gateway fuses them with the staging priors (SPEC §2.3).
"""

from avn.serving.handler_base import ClassifierHandler


class NotesHandler(ClassifierHandler):
    task = "notes"
