//! tutti-sim: deterministic simulator for tutti-proto.
