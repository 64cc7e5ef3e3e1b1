"""The diagnosis gateway: decode → detect → crop → classifiers → prior fusion → output (SPEC §5)."""
