//! `gateway-proto`: the generated types, client and server of the gateway's admin API
//! (`gateway.admin.v1`, defined in `proto/gateway/admin/v1/admin.proto`).
//!
//! Only gatewayd's `admin/` module and gatewayctl depend on this crate; the rest of the daemon
//! speaks its own domain types.

/// `gateway.admin.v1`.
pub mod admin {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("gateway.admin.v1");
}

/// The encoded file descriptor set of the API, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("admin_descriptor");
