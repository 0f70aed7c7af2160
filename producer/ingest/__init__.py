"""The HTTP ingest: log events from applications and API gateways into the agent's buffer.

``parse`` turns request bodies into LogEvent rows; ``stage`` groups them into
durable buffer entries and answers the requests.  The routes live on the
telemetry server (telemetry/server.py); pipeline.py wires them.
"""
