//! The coordinatool scheduling engine: a sans-IO state machine (events in, actions out).
