//! Shared-memory ring layouts: publish ring, delivery log, doorbells.
