"""A deterministic SPDX 2.3 JSON document of a resolved package set."""

from __future__ import annotations

import datetime
import hashlib
import json
import urllib.parse
from collections.abc import Iterable

from mk.rules.deb.lockfile import LockedPackage


def spdx(name: str, packages: Iterable[LockedPackage], epoch: int, distro: str) -> str:
    ordered = sorted(packages, key=lambda p: (p.name, p.architecture))
    spdx_packages: list[dict[str, object]] = [
        {
            "SPDXID": f"SPDXRef-Package-{_ref(p.name)}-{_ref(p.architecture)}",
            "name": p.name,
            "versionInfo": p.version,
            "supplier": "NOASSERTION",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "sourceInfo": f"built package from: {p.source}",
            "checksums": [{"algorithm": "SHA256", "checksumValue": p.sha256}],
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": f"pkg:deb/debian/{p.name}@{urllib.parse.quote(p.version, safe='')}"
                                    f"?arch={p.architecture}&distro={distro}",
            }],
        }
        for p in ordered
    ]
    return _document(name, spdx_packages, epoch)


def _ref(text: str) -> str:
    """SPDX identifiers allow letters, digits, '.' and '-'."""
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in text)


def merge_documents(name: str, documents: list[str], epoch: int) -> str:
    """One SPDX document describing every package of several (an image made of package sets)."""
    packages: dict[str, dict[str, object]] = {}
    for text in documents:
        for package in json.loads(text).get("packages", []):
            packages[str(package["SPDXID"])] = package
    return _document(name, [packages[key] for key in sorted(packages)], epoch)


def _document(name: str, packages: list[dict[str, object]], epoch: int) -> str:
    created = datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # The namespace must be unique per document: derive it from the content, not from a clock.
    fingerprint = hashlib.sha256(json.dumps(packages, sort_keys=True).encode()).hexdigest()
    document = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"https://spdx.org/spdxdocs/mk-{_ref(name)}-{fingerprint}",
        "creationInfo": {"created": created, "creators": ["Tool: mk"]},
        "packages": packages,
        "relationships": [
            {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": p["SPDXID"]}
            for p in packages
        ],
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
