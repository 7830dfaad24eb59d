"""Wire types: the pydantic models of every IPC message (camelCase on the wire)."""
