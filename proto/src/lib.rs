//! tutti-proto: the protocols as sans-IO state machines.
