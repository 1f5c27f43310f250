"""Cluster API managers' ``config/`` (CRDs, webhook configurations), rewritten the way their
kustomize patches would, but for a manager serving its webhooks on loopback instead of a Service.

Used for the core manager (:mod:`capi_remote_testbed.controlplane`) and the kubeadm providers
(:mod:`capi_remote_testbed.kubeadm_providers`). Invariant: every webhook and conversion
``clientConfig`` points at ``https://127.0.0.1:<port>`` and trusts exactly the given CA.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from capi_remote_testbed.net import LOOPBACK


def client_config(ca_pem: bytes, port: int, path: str) -> dict[str, str]:
    return {
        "url": f"https://{LOOPBACK}:{port}{path}",
        "caBundle": base64.b64encode(ca_pem).decode(),
    }


def crds(
    config: Path, ca_pem: bytes, webhook_port: int, *, contract_labels: bool
) -> list[dict[str, Any]]:
    """The CRDs with the conversion webhook on loopback and, if ``contract_labels``, the labels
    of ``crd/kustomization.yaml`` (a provider's contract labels: Cluster API reads them to pick
    the API version)."""
    labels: dict[str, str] = {}
    if contract_labels:
        kustomization = yaml.safe_load((config / "crd" / "kustomization.yaml").read_text())
        for entry in kustomization.get("labels") or []:
            labels.update(entry.get("pairs") or {})
    documents = []
    for path in sorted((config / "crd" / "bases").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if labels:
            crd["metadata"].setdefault("labels", {}).update(labels)
        if len(crd["spec"]["versions"]) > 1:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "conversionReviewVersions": ["v1"],
                    "clientConfig": client_config(ca_pem, webhook_port, "/convert"),
                },
            }
        documents.append(crd)
    return documents


def webhooks(config: Path, ca_pem: bytes, webhook_port: int, prefix: str) -> list[dict[str, Any]]:
    """The (Mutating|Validating)WebhookConfigurations, named ``<prefix>-<name>``, on loopback."""
    configs = []
    for doc in yaml.safe_load_all((config / "webhook" / "manifests.yaml").read_text()):
        if not doc:
            continue
        doc["metadata"]["name"] = f"{prefix}-{doc['metadata']['name']}"
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = client_config(ca_pem, webhook_port, path)
        configs.append(doc)
    return configs
