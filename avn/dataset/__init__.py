"""The data-set format (docs/dataset.md): COCO-style annotations beside DICOM or PNG images."""
