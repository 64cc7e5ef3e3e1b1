"""TorchServe entry point of the view classifier (AP / FL; wire format: services/README.md)."""

from avn.serving.handler_base import ClassifierHandler


class ViewHandler(ClassifierHandler):
    task = "view"
