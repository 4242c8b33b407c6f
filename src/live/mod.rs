//! Following jobs live: the event hub that fans the durable event log out to streams, the
//! per-stream followers, and completion webhooks delivered from a durable outbox.

mod hub;
mod settings;
mod stream;
pub mod webhooks;

pub use hub::{EventHub, LiveEvent};
pub use settings::Settings;
pub use stream::{StreamFilter, follow};
