//! `Sources`: one task per source, started with the server and stopped
//! with it; the status each one keeps for `GET /v1/sources`.

use std::time::Duration;

use ferry_store::Store;

use crate::settings::SourceSettings;
use crate::status::SourceStatus;

/// The running sources. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Sources {}

impl Sources {
    /// Starts one drain task per source. Connecting happens in the tasks
    /// (a database that is down is retried, never a reason not to start).
    pub fn start(store: Store, sources: Vec<SourceSettings>) -> Sources {
        let _ = (store, sources);
        todo!("issue #17: Sources::start")
    }

    /// Every source's status, in configuration order.
    pub fn status(&self) -> Vec<SourceStatus> {
        todo!("issue #17: Sources::status")
    }

    /// One source's status.
    pub fn status_of(&self, name: &str) -> Option<SourceStatus> {
        let _ = name;
        todo!("issue #17: Sources::status_of")
    }

    /// Stops every source: the batch in flight commits or rolls back
    /// within `timeout`; locks are released with their connections.
    pub async fn shutdown(&self, timeout: Duration) {
        let _ = timeout;
        todo!("issue #17: Sources::shutdown")
    }
}
