//! Owned and zero-copy views of `struct hsm_action_list` / `struct hsm_action_item` (binary layout).
