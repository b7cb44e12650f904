"""The HTTP edge: an aiohttp application that forwards requests to the node's actors."""

from http_edge.app import create_app

__all__ = ["create_app"]
