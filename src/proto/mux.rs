//! The stream multiplexer of one link, sans I/O (API skeleton; implementation pending).
