//! Raw serde structs, exactly as the files are written (filled in by the config work).
