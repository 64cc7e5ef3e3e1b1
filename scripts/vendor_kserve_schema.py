"""Vendor KServe's CRD schemas for the offline validation of ``deploy/k8s`` (``tests/test_k8s.py``).

Reads KServe CRD YAML files (``config/crd/full/serving.kserve.io_<plural>.yaml`` of a KServe release)
and writes, per CRD and served version, its ``openAPIV3Schema`` as compact JSON under
``deploy/k8s/schemas/``, named ``<group>_<version>_<kind>.json`` (lower case). ``description``
strings are dropped: they are most of the bytes and no validator reads them. Nothing else changes,
so a vendored schema accepts and refuses exactly what the CRD does.

    python scripts/vendor_kserve_schema.py CRD.yaml... [--out deploy/k8s/schemas]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "schemas"


def without_descriptions(node: Any) -> Any:
    """The schema with every ``description`` of a schema node removed (property names are kept, even
    a property called ``description``: those sit under ``properties`` and are schemas, not strings)."""
    if isinstance(node, dict):
        return {
            key: without_descriptions(value)
            for key, value in node.items()
            if not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [without_descriptions(item) for item in node]
    return node


def schema_files(crd: dict) -> dict[str, dict]:
    """File name → pruned ``openAPIV3Schema`` for each served version of one CRD."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    return {
        f"{group}_{version['name']}_{kind}.json".lower(): without_descriptions(version["schema"]["openAPIV3Schema"])
        for version in crd["spec"]["versions"]
        if version.get("served", True)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crds", nargs="+", type=Path, help="CRD YAML files of a KServe release")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    for path in options.crds:
        for name, schema in schema_files(yaml.safe_load(path.read_text())).items():
            target = options.out / name
            target.write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
            print(f"{target}: {target.stat().st_size} bytes")


if __name__ == "__main__":
    main()
