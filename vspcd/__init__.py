"""vspcd: the virtual serial port concentrator daemon (stdlib only, asyncio on epoll)."""

__version__ = "0.1.0"
