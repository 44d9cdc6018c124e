"""The `--http` listener: a small HTTP/1.1 server (`server`), its sans-IO request parser
(`parse`) and its GET routes (`routes`: `/metrics`, `/healthz`, `/console_log/<uuid>`)."""
