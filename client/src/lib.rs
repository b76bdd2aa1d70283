//! tutti-client.
