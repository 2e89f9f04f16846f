//! awork-gateway: an authenticating reverse proxy for the awork API.

pub mod mock;
