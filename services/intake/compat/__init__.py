"""The reference protocol (apv/v27), served by the intake next to the native API.

apv/v27 is the registration and provisioning protocol of the reference's device
package (``connectd``: shell scripts over ``curl``), which devices already in the
field speak. The intake serves it under ``FLEETREG_COMPAT_PREFIX`` (default
``/apv/v27``), over https, on the same registry and with the same rules as the
native ``/v1`` API, so those devices move to fleetreg without any change: see
docs/reference-client.md.

* :mod:`.routes`: the HTTP calls (every answer is 200 with a body the client can read);
* :mod:`.handlers`: the protocol's steps (information, friendly configuration,
  download, configuration, register, ready) on the registry;
* :mod:`.answers`: the answers' text, in the only form the client can parse;
* ``openapi.yaml``: the protocol's OpenAPI 3.1 document, served at ``<prefix>/openapi.yaml``.
"""
