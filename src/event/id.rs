//! Deterministic event ids (SPEC §5).
