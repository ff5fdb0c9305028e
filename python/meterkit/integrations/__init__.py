"""Per-token session payments in your own web app, without the proxy: thin adapters of
`meterkit.sessions.meter.SessionMeter` for aiohttp (`meterkit.integrations.aiohttp`) and
Starlette (`meterkit.integrations.starlette`). Neither is imported here: an app imports the
one for its framework, and meterkit itself never needs Starlette."""
