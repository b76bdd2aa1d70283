//! UDP packet formats between daemons.
