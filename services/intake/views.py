"""The native device API's answers (/v1), shaped from the handlers' results."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.intake.handlers import Answer, Device
from shared.db.files import ServiceFile
from shared.http import json_response


def native_view(answer: Answer, retry_after: int) -> web.Response:
    """A registration call's or poll's answer: 200 ready, 202 pending, 403 refused, 404 unknown."""
    body: dict[str, Any] = {"status": answer.status, "request_id": answer.request_id}
    if answer.status == "ready":
        body.update(
            device_id=answer.device_id,
            hardware_id=answer.hardware_id,
            claimed_hardware_id=answer.claimed_hardware_id,
            clone=answer.clone,
            decision=answer.decision,
            manifest_url=f"/v1/devices/{answer.device_id}/manifest",
        )
        if answer.device_secret:
            body["device_secret"] = answer.device_secret
        return json_response(body, status=200)
    if answer.status == "pending":
        body["retry_after"] = retry_after
        return json_response(
            body,
            status=202,
            headers={
                "Retry-After": str(retry_after),
                "Location": f"/v1/registrations/{answer.request_id}",
            },
        )
    body["reason"] = answer.reason
    return json_response(body, status=403 if answer.status == "refused" else 404)


def manifest_view(device: Device, files: tuple[ServiceFile, ...], base_url: str) -> web.Response:
    """Every provisioning file of the device with its size, SHA-256 and download URL."""
    return json_response(
        {
            "device_id": device.id,
            "hardware_id": device.hardware_id,
            "generation": device.credential_generation,
            "files": [
                {
                    "name": f.recorded.file_name,
                    "provisioning_id": f.service.provisioning_id,
                    "service": f.service.name,
                    "type": f.service.service_type,
                    "type_code": f.service.type_code,
                    "port": f.service.port,
                    "size": f.recorded.size,
                    "sha256": f.recorded.sha256,
                    "url": f"{base_url}/v1/devices/{device.id}/files/{f.recorded.file_name}",
                }
                for f in files
                if f.recorded is not None
            ],
        }
    )


def file_view(content: bytes) -> web.Response:
    """A provisioning file: plain ASCII text."""
    return web.Response(body=content, content_type="text/plain", charset="ascii")


def accepted_view(**extra: Any) -> web.Response:
    """A device's signal (ready, heartbeat), accepted for processing."""
    return json_response({"status": "accepted", **extra}, status=202)


def yaml_view(document: str) -> web.Response:
    """An OpenAPI document."""
    return web.Response(text=document, content_type="application/yaml")
