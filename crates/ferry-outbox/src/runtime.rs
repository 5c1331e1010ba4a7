//! `Sources`: one task per source, started with the server and stopped
//! with it; the status each one keeps for `GET /v1/sources`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::drain::Drainer;
use crate::settings::SourceSettings;
use crate::status::{SourceState, SourceStatus};

/// The running sources. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Sources {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sources: Vec<Running>,
    /// True once `shutdown` was called: every task stops taking batches.
    stop: watch::Sender<bool>,
}

#[derive(Debug)]
struct Running {
    name: String,
    status: Arc<Mutex<SourceStatus>>,
    /// `None` once shut down.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Sources {
    /// Starts one drain task per source. Connecting happens in the tasks
    /// (a database that is down is retried, never a reason not to start).
    /// Call it within a tokio runtime: the tasks are spawned on it.
    pub fn start(store: Store, sources: Vec<SourceSettings>) -> Sources {
        let (stop, _) = watch::channel(false);
        let sources = sources
            .into_iter()
            .map(|s| {
                let status = Arc::new(Mutex::new(SourceStatus {
                    name: s.name.to_string(),
                    driver: s.driver.as_str().to_owned(),
                    table: s.table.to_string(),
                    state: SourceState::Standby,
                    drained: 0,
                    dead_lettered: 0,
                    backlog: None,
                    oldest_pending_age_ms: None,
                    stuck: false,
                    last_error: None,
                    lock_holder: None,
                    last_success_at: None,
                }));
                let name = s.name.to_string();
                let drainer = Drainer::new(store.clone(), s, status.clone(), stop.subscribe());
                let task = tokio::spawn(drainer.run());
                Running { name, status, task: Mutex::new(Some(task)) }
            })
            .collect();
        Sources { inner: Arc::new(Inner { sources, stop }) }
    }

    /// Every source's status, in configuration order.
    pub fn status(&self) -> Vec<SourceStatus> {
        self.inner.sources.iter().map(Running::status).collect()
    }

    /// One source's status.
    pub fn status_of(&self, name: &str) -> Option<SourceStatus> {
        self.inner.sources.iter().find(|r| r.name == name).map(Running::status)
    }

    /// Stops every source: the batch in flight commits or rolls back
    /// within `timeout`; locks are released with their connections.
    pub async fn shutdown(&self, timeout: Duration) {
        self.inner.stop.send_replace(true);
        let deadline = tokio::time::Instant::now() + timeout;
        for running in &self.inner.sources {
            let task = running.task.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(mut task) = task
                && tokio::time::timeout_at(deadline, &mut task).await.is_err()
            {
                // Dropping the task drops its connection: the database
                // rolls the batch back and releases the lock.
                tracing::warn!(source = %running.name, "outbox source did not stop in time; aborted");
                task.abort();
                let _ = task.await;
            }
            let mut st = running.status.lock().unwrap_or_else(|p| p.into_inner());
            st.state = SourceState::Stopped;
            st.lock_holder = None;
        }
    }
}

impl Running {
    fn status(&self) -> SourceStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
