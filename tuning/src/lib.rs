//! tutti-tuning.
