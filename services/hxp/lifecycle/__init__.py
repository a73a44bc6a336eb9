"""Configuration versions, live reload and rolling engine updates (`hxp config`, `hxp model update`)."""
