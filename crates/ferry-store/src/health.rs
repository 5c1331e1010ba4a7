//! The poison flag. After a failed write or fsync the state of the file on
//! disk is unknown (the kernel may have dropped the dirty pages), so ferry
//! never retries: every later write fails and readiness turns false.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, Ordering},
};

use crate::{Result, StoreError};

#[derive(Debug, Default)]
pub(crate) struct Health {
    poisoned: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Health {
    pub fn poison(&self, reason: String) {
        tracing::error!(%reason, "store poisoned: no further writes will be accepted");
        let mut slot = self.reason.lock().expect("health lock");
        slot.get_or_insert(reason);
        self.poisoned.store(true, Ordering::Release);
    }

    pub fn check(&self) -> Result<()> {
        if !self.poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        let reason = self.reason.lock().expect("health lock").clone().unwrap_or_default();
        Err(StoreError::Poisoned(reason))
    }
}
