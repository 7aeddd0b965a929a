//! Database mirroring: the principal ships its log to the mirror, which hardens and redoes it.
