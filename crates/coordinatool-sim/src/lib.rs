//! A simulated Lustre HSM, so coordinatool runs and is tested without Lustre.
