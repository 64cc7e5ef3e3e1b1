"""The DICOM node (``avn dicom-node``): a Storage SCP that diagnoses what modalities send it and
C-STOREs the SR and the annotated copy on to the PACS, through a durable spool (docs/integration.md)."""
