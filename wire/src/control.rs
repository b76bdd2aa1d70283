//! Local attach protocol over the Unix control socket (see docs/internals.md).
