//! Parser for the MDT `hsm/active_requests` listing.
