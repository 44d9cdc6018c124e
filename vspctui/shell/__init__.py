"""`vspc`: the operator's command line (`cli`), its commands (`commands`), the interactive
shell (`shell`) and the binary-clean pipe for gdb and socat (`proxy`)."""
