//! Output-tree diff (filled in by its issue).
