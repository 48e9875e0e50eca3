"""The read-only HTTP API over the archive (``becomingone serve``, SPEC section 6) and its client.

* :mod:`.queries`: each endpoint's parameters, parsed and checked (a bad one
  is named); no web library needed;
* :mod:`.server`: the Starlette application (JSON, or an Arrow IPC stream when
  asked); the queries themselves are :class:`connectors.memory.TemporalMemory`'s,
  the ones ``becomingone memory`` runs;
* :mod:`.openapi`: the OpenAPI description served at ``/openapi.json``;
* :mod:`.tls`: HTTPS with the ``security`` section's files, renewed files loaded;
* :mod:`.client`: :class:`ArchiveClient`, the Python client (standard library only).

The server needs the ``api`` extra (Starlette and uvicorn); the client does not.
"""
