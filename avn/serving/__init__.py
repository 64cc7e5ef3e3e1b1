"""Serving glue: the wire format of the model services, the TorchServe handler base, and helpers
that configure, start and stop a TorchServe process. Only ``handler_base`` imports TorchServe."""
