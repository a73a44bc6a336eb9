"""Operations: `hxp status`, `hxp usage report`, `hxp validate` and `hxp doctor` (one module each)."""
