//! The admin side: the embedded web UI at `/admin/` and the admin API under
//! `/admin/api/*` (analyst or admin keys; writes that change models, keys
//! and datasets need admin).

mod keys;
mod ui;

pub use keys::{create_key, list_audit, list_keys, revoke_key};
pub use ui::{ui_asset, ui_index};
