//! Configuration shared by both binaries.
