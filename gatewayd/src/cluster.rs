//! Multi-instance mode: several gateways on one PostgreSQL database, coordinating through its
//! membership, lease and bucket tables.
//!
//! [`relay`] carries a WebChat reply from the instance that sends it to the instance holding the
//! chat's socket.

pub mod relay;
