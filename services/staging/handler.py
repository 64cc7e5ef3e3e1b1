"""TorchServe entry point of the staging classifier, with class activation maps
(wire format: services/README.md)."""

from avn.serving.handler_base import ClassifierHandler


class StagingHandler(ClassifierHandler):
    task = "staging"
    returns_cams = True
