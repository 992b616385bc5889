"""The vendored test models are the published files, byte for byte, and each is accounted for."""

from __future__ import annotations

import csv
import hashlib

from _compile_helpers import ASSETS

PAPERWORK = {"MANIFEST.tsv", "LICENSE-MIT-microsoft.txt"}


def test_every_vendored_file_is_listed_with_its_source_license_and_checksum():
    with open(ASSETS / "MANIFEST.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    listed = {row["file"]: row for row in rows}
    on_disk = {str(p.relative_to(ASSETS)) for p in ASSETS.rglob("*") if p.is_file()} - PAPERWORK
    assert on_disk == set(listed)
    for name, row in listed.items():
        assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == row["sha256"], name
        assert row["source"] and row["path_in_source"] and row["license"], name
        assert row["license"].startswith("MIT") and "LICENSE-MIT-microsoft.txt" in row["license"]
