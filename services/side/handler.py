"""TorchServe entry point of the side classifier (left / right; wire format: services/README.md)."""

from avn.serving.handler_base import ClassifierHandler


class SideHandler(ClassifierHandler):
    task = "side"
