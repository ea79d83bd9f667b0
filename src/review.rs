//! Analysts' review of captured conversations: feedback folded into each
//! conversation's review, edits from the admin API, listing filters, and
//! the dashboard stats read from maintained tallies. Plain functions over
//! store records; the HTTP side is in `admin/conversations.rs`.

mod checks;
mod edit;
mod query;
mod signals;
mod stats;
mod view;

pub use checks::{MAX_CORRECTION, MAX_NOTES, check_score, check_taxonomy, check_text};
pub use edit::{BulkAction, ReviewPatch, apply_feedback, apply_patch, forget_feedback};
pub use query::{ListQuery, list_conversations, normalise_time};
pub use signals::{SignalFilter, has_labels, has_rating, signals_view};
pub use stats::stats;
pub use view::{TurnRecords, conversation_detail, conversation_summary, stored_turns};
