"""The phantom: procedurally generated pelvic radiographs with exact ground truth (SPEC §4)."""
