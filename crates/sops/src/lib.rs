//! SOPS format (filled in by its issue).
