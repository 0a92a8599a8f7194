"""The REST API under /api/v1: translates HTTP to calls on the hub's rooms."""
