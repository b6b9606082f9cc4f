//! Raw bindings to the subset of `lustreapi.h` the project uses, loaded at run time.
