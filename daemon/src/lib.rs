//! tuttid library part.
