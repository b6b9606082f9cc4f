//! `libcoordinatool_client.so`: the LD_PRELOAD library for movers (work in progress, issue 7).
//! It exports no symbol yet, so preloading it changes nothing.
