"""The diagnosis pipeline, one module per step of the system diagram (SPEC §2, §5):

    decode → detect → crop → classify → fuse → render → results

* :mod:`~avn.pipeline.decode` — request bytes → radiograph, or a clear refusal;
* :mod:`~avn.pipeline.detect` — femoral-head candidates, at most one head per image half;
* :mod:`~avn.pipeline.crop` — the square head crop and the classifiers' input normalisation
  (the one definition training, the model servers and the evaluation use);
* :mod:`~avn.pipeline.classify` — view, side, staging and notes on every head, concurrently;
* :mod:`~avn.pipeline.fuse` — sides, stages and their groupings, prior-fused notes, confidence
  (:mod:`~avn.pipeline.confidence`);
* :mod:`~avn.pipeline.render` — the CAM PNG per head and the overlay;
* :mod:`~avn.pipeline.results` — the typed result, the one schema REST and gRPC are built from;
* :mod:`~avn.pipeline.study` — a subject's radiographs together.

:class:`avn.pipeline.pipeline.Pipeline` runs the steps (``run_steps``) for the gateway and for the
evaluation alike, through a :class:`avn.pipeline.backend.ModelBackend` (TorchServe or in-process).
Errors are :mod:`avn.pipeline.errors` types. This package never imports :mod:`gateway`: the
gateway adds transports, the cache implementations, settings and metrics around it.
"""
