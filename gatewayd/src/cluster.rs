//! Multi-instance mode: what several gateway instances on one shared database run to
//! coordinate. [`leader`] runs a named long-lived job (a channel's connection, the scheduler) on
//! exactly one instance at a time, under a lease with a fencing epoch. [`relay`] carries a
//! WebChat reply from the instance that sends it to the instance holding the chat's socket.

pub mod leader;
pub mod relay;
