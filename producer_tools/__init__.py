"""Clients of the tfstream protocol: request/reply library, replay and camera tools.

`producer_tools.client.DetectClient` is the library; the HTTP bridge uses it too.
"""
