//! `sink = "stdout"` takes no settings.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}

impl StdoutConfig {
    pub fn validate(value: serde_json::Value) -> Result<Self, crate::ConfigError> {
        crate::parse(value)
    }
}
