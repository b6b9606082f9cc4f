//! The coordinatool wire protocol: typed JSON messages and stream framing, with no IO.
