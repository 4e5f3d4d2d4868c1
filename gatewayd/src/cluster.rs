//! Multi-instance mode: what several gateway instances on one shared database run to
//! coordinate. [`leader`] runs a named long-lived job (a channel's connection, the scheduler) on
//! exactly one instance at a time, under a lease with a fencing epoch.

pub mod leader;
