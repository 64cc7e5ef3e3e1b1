"""TorchServe entry point of the femoral-head detector (wire format: services/README.md)."""

from avn.serving.handler_base import DetectionHandler


class FemoralHeadDetectionHandler(DetectionHandler):
    """Radiograph in, femoral-head boxes in that radiograph's pixel coordinates out."""
