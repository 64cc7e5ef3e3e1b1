"""``python -m gateway.dicom_node``: the DICOM node with its settings from the environment and the
settings file (a container's command), as ``avn dicom-node`` without flags."""

from gateway.dicom_node.node import main

main()
