//! `[delivery]`: the gateway-wide delivery settings (a platform's own are its table's
//! `delivery` keys, [`crate::delivery::policy`]).

use std::time::Duration;

use serde::Deserialize;

/// `[delivery]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    /// `idempotency_ttl_secs`, default 86400: how long the answer to a request with an
    /// `Idempotency-Key` is kept and returned for its repeats.
    pub idempotency_ttl: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    pub(super) idempotency_ttl_secs: Option<u64>,
}
